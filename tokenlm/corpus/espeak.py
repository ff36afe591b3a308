"""espeak-ng through its C library (ctypes), with phoneme events giving phone timings.

The command line's ``--pho`` needs mbrola (not available), but the library initialised with
``espeakINITIALIZE_PHONEME_EVENTS`` calls the synth callback with ``espeakEVENT_PHONEME`` events whose
``audio_position`` (ms) marks where each phoneme starts. A phone ends where the next event starts;
the last ends at the end of the audio. Phone names are espeak's mnemonics (``_:`` etc. are pauses).

The library keeps global state: it is initialised once per process, and each ``synth`` call installs the
calling engine's callback. This is the one ctypes binding of espeak-ng in tokenlm (the corpus's synthetic
speech and the semantic tokenizer's phone-timed corpus both use it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import numpy as np

from tokenlm.errors import TokenlmError

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
CHARS_UTF8 = 1
POS_CHARACTER = 1
EVENT_LIST_TERMINATED, EVENT_PHONEME = 0, 7
PARAM_RATE, PARAM_PITCH, PARAM_RANGE = 1, 3, 4
SAMPLE_RATE = 22050  # espeak-ng's output rate


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Phone:
    start: float  # seconds
    end: float
    phone: str


@dataclass(frozen=True)
class Synthesis:
    """Mono float32 ``samples`` [N] at ``sample_rate`` Hz and their phone timings; ``events`` are the raw
    phoneme events ``(start sample, espeak phone name)``, for callers that make their own intervals."""

    samples: np.ndarray
    sample_rate: int
    phones: list[Phone]
    events: list[tuple[int, str]]


class Espeak:
    """Synthesize text with any espeak-ng voice (``en-us+m3``), rate (words/min) and pitch (0-99)."""

    _lib = None  # the process-wide library handle, initialised once

    def __init__(self, library: str | None = None):
        if Espeak._lib is None:
            name = library or ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
            try:
                lib = ctypes.CDLL(name)
            except OSError as e:
                raise TokenlmError(f"espeak-ng library not found ({e}); install the espeak-ng package") from None
            lib.espeak_Synth.argtypes = [
                ctypes.c_char_p,
                ctypes.c_size_t,
                ctypes.c_uint,
                ctypes.c_int,
                ctypes.c_uint,
                ctypes.c_uint,
                ctypes.c_void_p,
                ctypes.c_void_p,
            ]
            if lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, INITIALIZE_PHONEME_EVENTS) != SAMPLE_RATE:
                raise TokenlmError("espeak-ng failed to initialise")
            Espeak._lib = lib
        self.lib, self.sample_rate = Espeak._lib, SAMPLE_RATE
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, str]] = []  # (sample, ms, name)
        self._cb = _CALLBACK(self._on_audio)  # keep a reference: the library calls it later

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            if events[i].type == EVENT_PHONEME:
                name = bytes(events[i].id.string).split(b"\0")[0].decode("utf-8", "replace")
                self._events.append((events[i].sample, events[i].audio_position, name))
            i += 1
        return 0

    def synth(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, range_: int = 50) -> Synthesis:
        """``voice`` is ``accent`` or ``accent+variant``; rate in words/min, pitch and its range 0-99 (every
        parameter is set on every call: the library would keep the previous call's)."""
        self.lib.espeak_SetSynthCallback(self._cb)
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise TokenlmError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(PARAM_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(PARAM_PITCH, int(pitch), 0)
        self.lib.espeak_SetParameter(PARAM_RANGE, int(range_), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        phones = phones_from_events([(ms, name) for _, ms, name in self._events], len(samples) / self.sample_rate)
        return Synthesis(samples, self.sample_rate, phones, [(smp, name) for smp, _, name in self._events])


def phones_from_events(events: list[tuple[int, str]], total_s: float) -> list[Phone]:
    """Phoneme start events ``(ms, name)`` -> phones with ends (the next start; the last: ``total_s``)."""
    starts = [(ms / 1000.0, name) for ms, name in events if name.strip()]
    phones = []
    for i, (start, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else max(total_s, start)
        start, end = round(start, 4), round(end, 4)  # compare as stored: a last end 50 us past its start rounds to it
        if end > start:
            phones.append(Phone(start, end, name))
    return phones
