"""Token shards: audio tokenized once (``tokenlm tokenize``), read as numpy memmaps.

A shard folder holds::

    meta.json      n_q, codebook_size, frame_rate, the tokenizers used, item count
    codes.u16      codec codes of every clip, frame-major ``[total_frames, n_q]`` uint16 (memmap)
    semantic.u16   semantic units ``[total_units]`` uint16 (only with ``--semantic``)
    index.jsonl    one line per clip: offsets and lengths into the two arrays + the manifest fields

The folder is written under a temporary name and renamed, so a killed run leaves no half shard.
``length_buckets`` groups items of similar length into batches under a token budget (little padding);
``pack_rows`` concatenates short sequences into fixed-length rows for pure language modelling.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import TokenlmError
from .utils import log

META, CODES, SEMANTIC, INDEX = "meta.json", "codes.u16", "semantic.u16", "index.jsonl"
TEXT_MODEL = "text.model"  # the sentencepiece model beside a corpus's shard folders


@dataclass(frozen=True)
class ShardItem:
    codes: torch.Tensor  # [K, T] int64
    semantic: torch.Tensor | None  # [T'] int64
    info: dict[str, Any]  # the manifest fields (text, language, speaker, split, kind, ...)


class Shards:
    """Read a shard folder: ``len``, ``[i] -> ShardItem``, ``lengths`` (frames per item)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not (self.folder / META).is_file():
            raise TokenlmError(f"not a token shard folder (no {META}): {self.folder}")
        self.meta = json.loads((self.folder / META).read_text())
        self.index = [json.loads(line) for line in (self.folder / INDEX).read_text().splitlines() if line]
        K = self.meta["n_q"]
        n = sum(it["n_frames"] for it in self.index)
        self.codes = np.memmap(self.folder / CODES, dtype=np.uint16, mode="r", shape=(n, K)) if n else np.zeros((0, K))
        sem = self.folder / SEMANTIC
        self.semantic = np.memmap(sem, dtype=np.uint16, mode="r") if sem.is_file() and sem.stat().st_size else None
        self.lengths = np.array([it["n_frames"] for it in self.index], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> ShardItem:
        it = self.index[i]
        o, n = it["offset"], it["n_frames"]
        codes = torch.from_numpy(np.asarray(self.codes[o : o + n], dtype=np.int64).T.copy())  # [K, T]
        sem = None
        if self.semantic is not None and it.get("sem_frames"):
            so, sn = it["sem_offset"], it["sem_frames"]
            sem = torch.from_numpy(np.asarray(self.semantic[so : so + sn], dtype=np.int64))
        info = {k: v for k, v in it.items() if k not in ("offset", "n_frames", "sem_offset", "sem_frames")}
        return ShardItem(codes, sem, info)


def write_shards(
    folder: str | os.PathLike,
    items: Iterable[tuple[dict, np.ndarray, np.ndarray | None]],
    meta: dict[str, Any],
) -> Path:
    """Write ``(info, codes [K, T], semantic [T'] or None)`` items to a shard folder, atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        n_items = _write_arrays(tmp, items, meta)
        (tmp / META).write_text(json.dumps({**meta, "n_items": n_items}, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_arrays(tmp: Path, items, meta) -> int:
    K, cb = meta["n_q"], meta["codebook_size"]
    if cb > 65536:
        raise TokenlmError("codebooks over 65536 entries do not fit uint16 shards")
    off = sem_off = n = 0
    with open(tmp / CODES, "wb") as fc, open(tmp / SEMANTIC, "wb") as fs, open(tmp / INDEX, "w") as fi:
        for info, codes, sem in items:
            codes = np.asarray(codes)
            if codes.ndim != 2 or codes.shape[0] != K:
                raise TokenlmError(f"item {info.get('id')}: codes must be [{K}, T], got {codes.shape}")
            fc.write(np.ascontiguousarray(codes.T.astype(np.uint16)).tobytes())
            row = {**info, "offset": off, "n_frames": int(codes.shape[1])}
            off += codes.shape[1]
            if sem is not None:
                sem = np.asarray(sem).reshape(-1)
                fs.write(sem.astype(np.uint16).tobytes())
                row.update(sem_offset=sem_off, sem_frames=int(sem.shape[0]))
                sem_off += sem.shape[0]
            fi.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


# --------------------------------------------------------------------------- batching


def length_buckets(
    lengths: np.ndarray, max_tokens: int, seed: int, epoch: int = 0, bucket_span: int = 64
) -> list[list[int]]:
    """Batches of item indices with ``len(batch) * longest <= max_tokens``, similar lengths together.

    Items are shuffled, sorted by length inside spans of ``bucket_span * typical batch`` items, cut
    into batches, and the batch order is shuffled; ``(seed, epoch)`` fixes the result (exact resume).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    batches: list[list[int]] = []
    span = max(1, bucket_span * max(1, max_tokens // max(1, int(np.median(lengths)) if len(lengths) else 1)))
    for s in range(0, len(order), span):
        chunk = sorted(order[s : s + span].tolist(), key=lambda i: lengths[i])
        batch: list[int] = []
        for i in chunk:
            longest = max([lengths[j] for j in batch] + [lengths[i]])
            if batch and longest * (len(batch) + 1) > max_tokens:
                batches.append(batch)
                batch = []
            batch.append(i)
        if batch:
            batches.append(batch)
    return [batches[i] for i in rng.permutation(len(batches))]


def pack_rows(
    seqs: Iterable[tuple[torch.Tensor, torch.Tensor]], seq_len: int, pad_id: int
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Concatenate ``(ids [K, S], loss_mask [K, S])`` sequences into rows of ``seq_len`` positions.

    Sequences longer than a row are cut into row-sized pieces; the last partial row is padded with
    ``pad_id`` (loss off). Yields ``(ids [K, seq_len], loss_mask [K, seq_len])``.
    """
    buf_ids: list[torch.Tensor] = []
    buf_mask: list[torch.Tensor] = []
    filled = 0
    for ids, mask in seqs:
        while ids.shape[1]:
            take = min(seq_len - filled, ids.shape[1])
            buf_ids.append(ids[:, :take])
            buf_mask.append(mask[:, :take])
            ids, mask, filled = ids[:, take:], mask[:, take:], filled + take
            if filled == seq_len:
                yield torch.cat(buf_ids, 1), torch.cat(buf_mask, 1)
                buf_ids, buf_mask, filled = [], [], 0
    if filled:
        K = buf_ids[0].shape[0]
        buf_ids.append(torch.full((K, seq_len - filled), pad_id, dtype=torch.long))
        buf_mask.append(torch.zeros(K, seq_len - filled, dtype=torch.bool))
        yield torch.cat(buf_ids, 1), torch.cat(buf_mask, 1)


# --------------------------------------------------------------------------- tokenize


def tokenize_clips(clips: Iterable[Any], codec: Any, semantic: Any | None = None, batch_seconds: float = 20.0):
    """Yield ``(info, codes [K, T], units [T'] or None)`` per clip, in order; tokenizers follow AudioTokenizer.

    The codec encodes clips in batches of up to ``batch_seconds`` of audio, zero-padded at the end: it is
    causal, so a clip's codes do not depend on what follows (tested: batched == one by one). The semantic
    tokenizer attends both ways, so it encodes each clip alone.
    """
    from .codecs.audio import AudioError, load_audio

    def load(info, tok):
        return np.asarray(load_audio(info["path"], tok.sample_rate, channels=1).samples[0], dtype=np.float32)

    def encode(tok, wavs):
        n = max(w.size for w in wavs)
        x = torch.zeros(len(wavs), 1, n)
        for i, w in enumerate(wavs):
            x[i, 0, : w.size] = torch.from_numpy(w)
        with torch.inference_mode():
            out = tok.encode(x)  # [B, K, T]
        hop = tok.sample_rate / tok.frame_rate
        return [out[i, :, : math.ceil(w.size / hop - 1e-9)] for i, w in enumerate(wavs)]

    batch: list[dict] = []

    def flush():
        good, wavs = [], []
        for info in batch:  # a corpus clip that does not decode is skipped, not fatal to hours of work
            try:
                wavs.append(load(info, codec))
                good.append(info)
            except AudioError as e:
                log.warning("tokenize: skipped %s (%s)", info.get("id"), e)
        batch[:] = good
        if not good:
            return
        codes = encode(codec, wavs)
        units = [None] * len(batch)
        if semantic is not None:
            units = [encode(semantic, [load(info, semantic)])[0][0] for info in batch]
        for info, c, u in zip(batch, codes, units):
            yield info, c.cpu().numpy(), None if u is None else u.cpu().numpy()

    for clip in clips:
        batch.append(clip.to_json() if hasattr(clip, "to_json") else dict(clip))
        if sum(float(b.get("duration") or 0.0) for b in batch) >= batch_seconds or len(batch) >= 64:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def tokenizer_meta(codec: Any, semantic: Any | None, codec_name: str, semantic_name: str | None) -> dict:
    meta = {
        "n_q": int(codec.n_q),
        "codebook_size": int(codec.codebook_size),
        "frame_rate": float(codec.frame_rate),
        "sample_rate": int(codec.sample_rate),
        "codec": codec_name,
    }
    if semantic is not None:
        meta.update(
            semantic=semantic_name,
            semantic_size=int(semantic.n_q * semantic.codebook_size),
            semantic_frame_rate=float(semantic.frame_rate),
        )
    return meta


def tokenize_corpus(
    out: str | os.PathLike,
    codec_name: str = "codec-16k",
    semantic_name: str | None = None,
    parts: Iterable[str] | None = None,
    text_pieces: int = 2000,
    data_root: str | os.PathLike | None = None,
) -> Path:
    """Token shards of a built corpus, for multitask training: ``out/<part>/`` per corpus part and
    ``out/text.model``, the sentencepiece model of the training transcripts (all languages).

    Resumable by part: a part whose shard folder exists (written by the same codec) is kept; a part is
    written under a temporary name, so a killed run leaves no half folder.
    """
    from .corpus.manifest import PARTS, manifest_path, read_manifest
    from .pretrained import load
    from .utils import progress
    from .vocab import train_sentencepiece

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    codec = load(codec_name)
    semantic = load(semantic_name) if semantic_name else None
    meta = tokenizer_meta(codec, semantic, codec_name, semantic_name)
    texts: list[str] = []
    for part in parts or PARTS:
        path = manifest_path(data_root, part)
        if not path.is_file():
            log.warning("tokenize: no %s manifest (skipped)", part)
            continue
        clips = read_manifest(path)
        texts += [c.text for c in clips if c.text and c.split == "train" and c.kind.startswith("speech")]
        # a mixture's sources, exactly as mixed, are the targets of separation: a shard folder beside it
        sources = [
            {"id": f"{c.id}#s{j}", "path": p, "duration": c.duration, "split": c.split, "kind": "source",
             "source_of": c.id, "source_index": j}
            for c in clips for j, p in enumerate(c.sources)
        ]
        for name, todo in ((part, clips), (f"{part}_sources", sources)):
            folder = out / name
            if not todo:
                continue
            if (folder / META).is_file() and json.loads((folder / META).read_text()).get("codec") == codec_name:
                log.info("tokenize: %s is done (%s)", name, folder)
                continue
            items = tokenize_clips(progress(todo, desc=f"tokenize {name}", unit="clip"), codec, semantic)
            write_shards(folder, items, meta)
    if not (out / TEXT_MODEL).is_file():
        tmp = out / f"_text_{os.getpid()}"  # sentencepiece writes <prefix>.model and <prefix>.vocab
        try:
            os.replace(train_sentencepiece(texts, tmp, vocab_size=text_pieces), out / TEXT_MODEL)
        finally:
            for leftover in out.glob(f"{tmp.name}.*"):
                leftover.unlink()
    return out



def cli_tokenize(args) -> int:
    """``tokenlm tokenize MANIFEST -o SHARDS [--codec C] [--semantic]`` or ``tokenlm tokenize --corpus -o ROOT``."""
    from .corpus.manifest import read_manifest
    from .pretrained import load
    from .utils import progress

    semantic_name = args.semantic_model if args.semantic else None
    if args.corpus:
        folder = tokenize_corpus(Path(args.output), args.codec, semantic_name, args.parts or None, args.text_pieces)
        print(f"wrote token shards and {TEXT_MODEL} to {folder}")
        return 0
    if not args.manifest:
        raise TokenlmError("give a MANIFEST, or --corpus for every part of the built corpus")
    clips = read_manifest(args.manifest)
    if not clips:
        raise TokenlmError(f"{args.manifest}: empty manifest")
    codec = load(args.codec)
    semantic = load(semantic_name) if semantic_name else None
    meta = tokenizer_meta(codec, semantic, args.codec, semantic_name)
    items = tokenize_clips(progress(clips, desc="tokenize", unit="clip"), codec, semantic)
    out = write_shards(args.output, items, meta)
    print(f"wrote {len(clips)} clips to {out}")
    return 0
