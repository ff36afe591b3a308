"""The ``.tlm`` compressed-audio container and the ``tokenlm compress`` / ``decompress`` commands.

Layout (little-endian)::

    header   magic b"TKLM" | version u8 | n_q u8 | codebook_bits u8 | reserved u8
             sample_rate u32 | hop u16 | frames_per_block u16 | num_frames u32 | num_samples u32
             model_hash 8 bytes | model_id_len u8 | model_id utf-8 | header CRC32 u32
    blocks   one per ``frames_per_block`` frames (the last may be shorter):
             CRC32 u32 of the payload | payload: the block's codes, frame-major (t, k), each code in
             ``codebook_bits`` bits, MSB first, zero-padded to a whole byte

Block sizes follow from the header, so no lengths are stored: a 10 s file at 1.5 kbps is the payload
(1,875 bytes) plus ~40 bytes of header and 4 bytes per 5 s block — ``bitrate_of`` reports it honestly.
A wrong magic, version, CRC or length is refused with a clear error; nothing is decoded into noise.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenlm.errors import TokenlmError

MAGIC = b"TKLM"
VERSION = 1
_FIXED = struct.Struct("<4sBBBBIHHII8sB")
FRAMES_PER_BLOCK = 250


class ContainerError(TokenlmError):
    """A .tlm file that is corrupt, truncated or not a .tlm file."""


@dataclass(frozen=True)
class Header:
    n_q: int
    codebook_bits: int
    sample_rate: int
    hop: int
    num_frames: int
    num_samples: int
    model_id: str
    model_hash: bytes  # first 8 bytes of the weights' sha256
    frames_per_block: int = FRAMES_PER_BLOCK

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def block_bytes(self, frames: int) -> int:
        return math.ceil(frames * self.n_q * self.codebook_bits / 8)

    def pack(self) -> bytes:
        mid = self.model_id.encode("utf-8")
        if len(mid) > 255:
            raise ValueError("model id too long")
        if self.num_samples >= 2**32:
            raise TokenlmError("input too long for the .tlm format (more than 2^32 samples)")
        body = (
            _FIXED.pack(
                MAGIC,
                VERSION,
                self.n_q,
                self.codebook_bits,
                0,
                self.sample_rate,
                self.hop,
                self.frames_per_block,
                self.num_frames,
                self.num_samples,
                self.model_hash,
                len(mid),
            )
            + mid
        )
        return body + struct.pack("<I", zlib.crc32(body))


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """codes ``[K, t]`` (values < 2**bits) -> bytes, frame-major, MSB first."""
    flat = codes.T.reshape(-1).astype(np.uint32)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    bitarr = ((flat[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bitarr.reshape(-1)).tobytes()


def unpack_codes(data: bytes, n_q: int, frames: int, bits: int) -> np.ndarray:
    """Inverse of ``pack_codes`` -> ``[K, t]`` int64."""
    bitarr = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: frames * n_q * bits]
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    values = bitarr.reshape(-1, bits).astype(np.int64) @ weights
    return values.reshape(frames, n_q).T.copy()


class Writer:
    """Write a .tlm file block by block (bounded memory): ``write(codes [K, t])`` any number of frames."""

    def __init__(self, f, header: Header):
        self.f, self.h = f, header
        self.pending = np.zeros((header.n_q, 0), dtype=np.int64)
        self.frames = 0
        f.write(header.pack())

    def write(self, codes: np.ndarray) -> None:
        self.pending = np.concatenate([self.pending, codes], axis=1)
        while self.pending.shape[1] >= self.h.frames_per_block:
            self._block(self.pending[:, : self.h.frames_per_block])
            self.pending = self.pending[:, self.h.frames_per_block :]

    def _block(self, codes: np.ndarray) -> None:
        payload = pack_codes(codes, self.h.codebook_bits)
        self.f.write(struct.pack("<I", zlib.crc32(payload)) + payload)
        self.frames += codes.shape[1]

    def close(self) -> None:
        if self.pending.shape[1]:
            self._block(self.pending)
        if self.frames != self.h.num_frames:
            raise ValueError(f"wrote {self.frames} frames, header says {self.h.num_frames}")


def read_header(f, name: str = "file") -> Header:
    raw = f.read(_FIXED.size)
    if len(raw) < 4 or raw[:4] != MAGIC:
        raise ContainerError(f"{name}: not a .tlm file (bad magic)")
    if len(raw) < _FIXED.size:
        raise ContainerError(f"{name}: truncated header")
    magic, version, n_q, bits, _, sr, hop, fpb, frames, samples, mhash, mlen = _FIXED.unpack(raw)
    if version != VERSION:
        raise ContainerError(f"{name}: .tlm format version {version} is not supported (this reads {VERSION})")
    mid = f.read(mlen)
    crc = f.read(4)
    if len(mid) < mlen or len(crc) < 4:
        raise ContainerError(f"{name}: truncated header")
    if struct.unpack("<I", crc)[0] != zlib.crc32(raw + mid):
        raise ContainerError(f"{name}: header checksum mismatch (corrupt file)")
    if not (n_q and bits and hop and fpb and sr):
        raise ContainerError(f"{name}: invalid header values")
    return Header(n_q, bits, sr, hop, frames, samples, mid.decode("utf-8", "replace"), mhash, fpb)


def read_blocks(f, h: Header, name: str = "file") -> Iterator[np.ndarray]:
    """Yield the codes ``[K, t]`` of each block, checking every CRC; refuses truncation and trailing data."""
    remaining = h.num_frames
    index = 0
    while remaining > 0:
        frames = min(h.frames_per_block, remaining)
        crc = f.read(4)
        payload = f.read(h.block_bytes(frames))
        if len(crc) < 4 or len(payload) < h.block_bytes(frames):
            raise ContainerError(f"{name}: truncated (block {index} incomplete)")
        if struct.unpack("<I", crc)[0] != zlib.crc32(payload):
            raise ContainerError(f"{name}: checksum mismatch in block {index} (corrupt file)")
        yield unpack_codes(payload, h.n_q, frames, h.codebook_bits)
        remaining -= frames
        index += 1
    if f.read(1):
        raise ContainerError(f"{name}: unexpected data after the last block")


def bitrate_of(path: str | Path, header: Header) -> float:
    """The file's true bitrate in kbps, header and checksums included."""
    seconds = header.num_samples / header.sample_rate
    return Path(path).stat().st_size * 8 / seconds / 1000 if seconds else 0.0
