"""``Pipeline``: the multitask LM with its codec and text tokenizer, loaded once; one method per task.

The CLI and the demo call only this::

    pipe = Pipeline.from_pretrained("tokenlm-small")
    pipe.asr("speech.wav").text
    wav = pipe.tts("Hello there.", voice="prompt.wav", voice_text="The prompt's words.")
    for chunk in pipe.tts_stream("Hello there."):   # float32 samples at pipe.sample_rate, as generated
        ...

Inputs are paths or ``(samples, sample_rate)``; bad input raises ``TokenlmError`` with a one-line reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tokenlm.errors import TokenlmError
from tokenlm.sampling import SamplingParams, decode_steps, stream_codec

from .base import Example, LangThenText, TaskContext, get_task, split_language_and_text

Audio = str | os.PathLike | tuple[np.ndarray, int]

MIN_VOICE_SECONDS = 1.0
MAX_VOICE_SECONDS = 4.0  # voice prompts are cut to this: the longest prompt utterance of training (data.max_prompt_seconds)


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None
    windows: list[dict] = field(default_factory=list)  # per window: start, end (s), text, language


class Pipeline:
    """The multitask LM, the codec whose codes it models, and the task layouts."""

    def __init__(self, lm, codec, context: int | None = None, threads: int = 1, decode_precision: str | None = None):
        """``decode_precision``: the LM's weights while generating (default int8 weight-only, see tokenlm.quant:
        batch-1 steps are bound by weight traffic)."""
        from tokenlm.quant import DEFAULT_DECODE_PRECISION, decoding_copy

        if lm.text_tokenizer is None:
            raise TokenlmError("this LM has no text tokenizer (tokenizer.model) beside it")
        if lm.vocab.codebook_size != codec.codebook_size or lm.vocab.n_q > codec.n_q:
            raise TokenlmError("the LM was trained on another codec's codes")
        meta_src = lm
        lm = decoding_copy(lm, decode_precision or DEFAULT_DECODE_PRECISION)
        lm.pretrained_meta = getattr(meta_src, "pretrained_meta", {})
        self.lm, self.codec, self.threads = lm, codec.eval(), threads
        self.ctx = TaskContext(lm.vocab, lm.text_tokenizer, lm.vocab.n_q, getattr(lm, "pattern", "delay"))
        meta = getattr(lm, "pretrained_meta", {}) or {}
        self.context = min(lm.cfg.max_seq_len, context or int(meta.get("seq_len", lm.cfg.max_seq_len)))
        self.sample_rate, self.frame_rate = codec.sample_rate, codec.frame_rate

    @classmethod
    def from_pretrained(cls, name: str = "tokenlm-small", codec: str = "codec-16k", **kw) -> Pipeline:
        """Load a bundled LM (or an LM folder) and its codec, offline and sha256-checked."""
        from tokenlm.pretrained import load

        return cls(load(name), load(codec), **kw)

    # ------------------------------------------------------------------ audio in
    def load(self, audio: Audio) -> np.ndarray:
        """A path or ``(samples, rate)`` -> mono float32 samples at the codec's rate."""
        return load_mono(audio, self.sample_rate)

    def encode(self, wav: np.ndarray) -> torch.Tensor:
        """Samples ``[N]`` -> codes ``[n_q, T]`` of the LM's codebooks."""
        with torch.inference_mode():
            return self.codec.encode(torch.from_numpy(wav)[None, None], self.ctx.n_q)[0]

    # ------------------------------------------------------------------ ASR
    def asr(self, audio: Audio, window_seconds: float = 8.0, max_tokens: int = 160) -> Transcript:
        """Transcribe; long audio is cut into windows at quiet frames and the texts are joined."""
        wav = self.load(audio)
        task = get_task("asr")
        rows = []
        for start, end in speech_windows(wav, self.sample_rate, window_seconds):
            codes = self.encode(wav[start:end])
            prompt = task.condition(self.ctx, Example(codes=codes)).build().ids[None]
            ids = self._generate_text(prompt, max_tokens)
            lang, text_ids = split_language_and_text(self.lm.vocab, ids)
            text = self.ctx.text.decode(text_ids).strip()
            rows.append({"start": start / self.sample_rate, "end": end / self.sample_rate, "text": text, "language": lang})
        langs = [r["language"] for r in rows if r["language"] and r["text"]]
        language = max(set(langs), key=langs.count) if langs else None
        return Transcript(" ".join(r["text"] for r in rows if r["text"]), language, rows)

    def _generate_text(self, prompt: torch.Tensor, max_tokens: int, language: bool = True) -> torch.Tensor:
        rule = LangThenText(self.lm.vocab, prompt.shape[1], 1, max_tokens, language=language)
        p = SamplingParams(temperature=0.0, threads=self.threads)
        steps = [s[0, 0] for s in decode_steps(self.lm, prompt, rule, p)]
        return torch.stack(steps) if steps else torch.zeros(0, dtype=torch.long)

    # ------------------------------------------------------------------ TTS and cloning
    def tts(self, text: str, **kw) -> np.ndarray:
        """Speech for ``text`` (float32 samples at ``sample_rate``); see ``tts_stream`` for the options."""
        chunks = list(self.tts_stream(text, **kw))
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def tts_stream(
        self,
        text: str,
        voice: Audio | None = None,
        voice_text: str | None = None,
        language: str = "en",
        seed: int | None = None,
        temperature: float = 0.8,
        top_k: int = 50,
        chunk_frames: int = 10,
    ) -> Iterator[np.ndarray]:
        """Yield audio while it is generated: every ``chunk_frames`` frames are decoded as soon as all their
        codebooks are known. With ``voice`` (a clip of 1 s or more; its first ``MAX_VOICE_SECONDS`` are used),
        the voice-cloning layout; ``voice_text`` is its transcript (transcribed by the model when None).
        Text longer than the context allows is spoken sentence group by sentence group."""
        from tokenlm.codecs.codec.model import StreamingDecoder

        sentences = self._text_chunks(text, language)
        prompt_ex = self._voice_example(voice, voice_text) if voice is not None else None
        task = get_task("clone" if prompt_ex is not None else "tts")
        gen = torch.Generator().manual_seed(seed if seed is not None else 0)
        p = SamplingParams(temperature=temperature, top_k=top_k, threads=self.threads)
        decoder = StreamingDecoder(self.codec)
        for sentence in sentences:
            ex = Example(codes=torch.zeros(self.ctx.n_q, 0, dtype=torch.long), text=sentence, language=language)
            prompt = task.condition(self.ctx, ex, voice=prompt_ex).build().ids[None]
            budget = self.context - prompt.shape[-1] - self.ctx.n_q
            max_frames = min(budget, int(self.frame_rate * (2.0 + len(sentence) / 6.0)))
            if max_frames < self.frame_rate:
                raise TokenlmError("the voice prompt and text leave no room to speak in the model's context")
            pending = []
            for frame in self._frames(prompt, max_frames, p, gen):
                pending.append(frame)
                if len(pending) == chunk_frames:
                    yield self._decode_frames(decoder, pending)
                    pending = []
            if pending:
                yield self._decode_frames(decoder, pending)

    def _frames(self, prompt, max_frames: int, p: SamplingParams, gen, uncond=None) -> Iterator[torch.Tensor]:
        """Generated codec frames ``[K]`` (codes, not ids) until eos or ``max_frames``."""
        starts = torch.tensor([self.lm.vocab.codec_range(k).start for k in range(self.ctx.n_q)])
        for frame in stream_codec(self.lm, prompt, max_frames, p, generator=gen, uncond=uncond):
            if int(frame[0, 0]) == self.lm.vocab.eos:
                return
            yield frame[0] - starts

    def _decode_frames(self, decoder, frames: list[torch.Tensor]) -> np.ndarray:
        codes = torch.stack(frames, dim=1)[None].clamp(0, self.codec.codebook_size - 1)  # [1, K, t]
        with torch.inference_mode():
            return decoder.push(codes)[0].float().numpy()

    # ------------------------------------------------------------------ audio tasks
    def separate(
        self, audio: Audio, target: str = "speech", seed: int | None = None, temperature: float = 0.8, top_k: int = 50
    ) -> dict[str, np.ndarray]:
        """``{target: estimate, "rest": mixture - estimate}`` (float32 at ``sample_rate``, the mixture's length).

        ``target``: ``speech``, ``music`` or ``background`` (the non-speech source). Long mixtures are done in
        windows. The estimate is generated, so not sample-aligned: it is aligned to the mixture (lag and gain
        by least squares) before it is subtracted."""
        token = {"background": "sound"}.get(target, target)
        wav = self.load(audio)
        task = get_task("separate")
        gen = torch.Generator().manual_seed(seed or 0)
        p = SamplingParams(temperature=temperature, top_k=top_k, threads=self.threads)
        out = np.zeros_like(wav)
        for start, end in speech_windows(wav, self.sample_rate, self._window_seconds()):
            mix = Example(codes=self.encode(wav[start:end]), kind="mixture")
            prompt = task.condition(self.ctx, mix, mixture=mix, target=token).build().ids[None]
            frames = list(self._frames(prompt, int(mix.codes.shape[-1] * 1.25) + 5, p, gen))
            est = self._decode_codes(frames)
            out[start:end] = align_to(est, wav[start:end])
        return {target: out, "rest": wav - out}

    def caption(self, audio: Audio, max_tokens: int = 40) -> dict:
        """``{"caption", "class", "windows"}`` of the first window (captions describe a clip, not a film):
        ``class`` is the broad class the caption names: speech, music or sound."""
        wav = self.load(audio)
        start, end = speech_windows(wav, self.sample_rate, self._window_seconds())[0]
        task = get_task("caption")
        prompt = task.condition(self.ctx, Example(codes=self.encode(wav[start:end]))).build().ids[None]
        ids = self._generate_text(prompt, max_tokens, language=False)
        _, text_ids = split_language_and_text(self.lm.vocab, ids)
        text = self.ctx.text.decode(text_ids).strip()
        return {"caption": text, "class": broad_class(text), "seconds": (end - start) / self.sample_rate}

    def continue_(
        self,
        audio: Audio,
        seconds: float = 10.0,
        seed: int | None = None,
        temperature: float = 1.0,
        top_k: int = 250,
        top_p: float = 1.0,
        cfg_scale: float = 1.0,
        prompt_seconds: float = 4.0,
    ) -> np.ndarray:
        """The input followed by ``seconds`` of continuation (float32 at ``sample_rate``). The last
        ``prompt_seconds`` of what is there so far prompt each step of up to 5 s; ``cfg_scale`` > 1 guides the
        model toward the prompt (classifier-free guidance against the prompt-less layout)."""
        wav = self.load(audio)
        if seconds <= 0:
            raise TokenlmError("--seconds must be positive")
        task = get_task("continue")
        gen = torch.Generator().manual_seed(seed or 0)
        p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale, threads=self.threads)
        codes = self.encode(wav)  # [K, T]
        T0, want = codes.shape[-1], int(round(seconds * self.frame_rate))
        P = max(1, int(prompt_seconds * self.frame_rate))
        uncond = task.condition(self.ctx, Example(codes=codes[:, :0])).build().ids[None] if cfg_scale != 1.0 else None
        while codes.shape[-1] < T0 + want:
            prompt = task.condition(self.ctx, None, prompt=Example(codes=codes[:, -P:])).build().ids[None]
            n = min(int(5 * self.frame_rate), T0 + want - codes.shape[-1])
            frames = list(self._frames(prompt, n, p, gen, uncond=uncond))
            if not frames:
                break
            codes = torch.cat([codes, torch.stack(frames, dim=1)], dim=1)
        with torch.inference_mode():  # decoded with what precedes it, so the decoder's state runs through the seam
            decoded = self.codec.decode(codes[None])[0, 0].float().numpy()
        return join_at_seam(wav, decoded[wav.size :], decoded[: wav.size])

    def _window_seconds(self) -> float:
        """Audio that fits the context twice over (prompt + output) with room for the layout."""
        return max(2.0, min(8.0, (self.context // 2 - 2 * self.ctx.n_q) / self.frame_rate))

    def _decode_codes(self, frames: list[torch.Tensor]) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        codes = torch.stack(frames, dim=1)[None].clamp(0, self.codec.codebook_size - 1)
        with torch.inference_mode():
            return self.codec.decode(codes)[0, 0].float().numpy()

    def _voice_example(self, voice: Audio, voice_text: str | None) -> Example:
        wav = self.load(voice)
        if wav.size < MIN_VOICE_SECONDS * self.sample_rate:
            raise TokenlmError(f"the voice prompt is shorter than {MIN_VOICE_SECONDS:g} s")
        if float(np.sqrt(np.mean(wav**2))) < 1e-4:
            raise TokenlmError("the voice prompt is silent")
        longest = int(MAX_VOICE_SECONDS * self.sample_rate)
        if wav.size > longest:  # the start of the clip; a given transcript would not match the cut
            wav, voice_text = wav[:longest], None
        if not voice_text:
            voice_text = self.asr((wav, self.sample_rate)).text
            if not voice_text:
                raise TokenlmError("no words were recognised in the voice prompt: give its transcript")
        return Example(codes=self.encode(wav), text=voice_text)

    def _text_chunks(self, text: str, language: str, max_pieces: int = 60) -> list[str]:
        """Sentences grouped into chunks of at most ``max_pieces`` text pieces (long sentences cut at words)."""
        text = " ".join((text or "").split())
        if not text:
            raise TokenlmError("the text is empty")
        self.ctx.language(language)  # an unknown language fails here, before anything is generated
        words_of = lambda s: len(self.ctx.text.encode(s))  # noqa: E731
        pieces: list[str] = []
        for sentence in re.split(r"(?<=[.!?;:])\s+", text):
            cur: list[str] = []
            for word in sentence.split():
                if cur and words_of(" ".join(cur + [word])) > max_pieces:
                    pieces.append(" ".join(cur))
                    cur = []
                cur.append(word)
            if cur:
                pieces.append(" ".join(cur))
        chunks: list[str] = []
        for s in pieces:
            if chunks and words_of(chunks[-1] + " " + s) <= max_pieces:
                chunks[-1] += " " + s
            else:
                chunks.append(s)
        return chunks


def load_mono(audio: Audio, sample_rate: int) -> np.ndarray:
    """A path or ``(samples, rate)`` -> mono float32 samples ``[N]`` at ``sample_rate``."""
    from tokenlm.codecs.audio import load_audio, mix_channels, resample

    if isinstance(audio, tuple):
        samples, sr = audio
        x = np.asarray(samples, dtype=np.float32)
        x = x[None] if x.ndim == 1 else x.T if x.shape[0] > x.shape[-1] else x  # -> [C, N]
        x = mix_channels(x, 1)
        if sr != sample_rate:
            x = resample(x, sr, sample_rate)
        x = x[0]
    else:
        x = load_audio(Path(audio), sample_rate, channels=1).samples[0]
    if x.size == 0:
        raise TokenlmError("the audio is empty")
    return x.astype(np.float32)


def speech_windows(wav: np.ndarray, sample_rate: int, window_seconds: float) -> list[tuple[int, int]]:
    """``[start, end)`` sample windows of at most ``window_seconds``, each cut at the quietest 20 ms frame of
    its last quarter (so words are rarely split); one window for short audio."""
    n, w = wav.size, int(window_seconds * sample_rate)
    hop = sample_rate // 50
    out, start = [], 0
    while n - start > w:
        lo, hi = start + 3 * w // 4, start + w
        frames = wav[lo:hi][: (hi - lo) // hop * hop].reshape(-1, hop)
        cut = lo + int(np.argmin((frames**2).mean(1))) * hop + hop // 2
        out.append((start, cut))
        start = cut
    out.append((start, n))
    return out


def align_to(est: np.ndarray, ref: np.ndarray, max_lag: int = 640) -> np.ndarray:
    """``est`` shifted by the lag (within ``max_lag`` samples) and scaled by the gain that best match ``ref``
    in the least-squares sense; cut or zero-padded to ``ref``'s length."""
    n = ref.size
    x = np.zeros(n + 2 * max_lag, np.float32)
    m = min(n + max_lag, est.size)
    x[max_lag : max_lag + m] = est[:m]
    corr = np.correlate(x, ref, mode="valid")  # lag -max_lag .. +max_lag
    shift = int(np.argmax(np.abs(corr)))
    y = x[shift : shift + n]
    gain = float(y @ ref) / float(y @ y + 1e-9)
    return (max(gain, 0.0) * y).astype(np.float32)


def join_at_seam(before: np.ndarray, after: np.ndarray, decoded_before: np.ndarray, fade: int = 160) -> np.ndarray:
    """``before`` then ``after``, with the first ``fade`` samples of ``after`` cross-faded from the codec's
    own decoding of the end of ``before`` (which ``after`` continues without a jump)."""
    if after.size == 0:
        return before
    f = min(fade, after.size, decoded_before.size)
    ramp = np.linspace(0.0, 1.0, f, dtype=np.float32)
    tail = before[before.size - f :] * (1 - ramp) + decoded_before[decoded_before.size - f :] * ramp
    return np.concatenate([before[: before.size - f], tail, after]).astype(np.float32)


def broad_class(caption: str) -> str:
    """The broad class a caption names: ``speech`` (someone speaks), ``music`` or ``sound``."""
    c = caption.lower()
    if " speak" in c or "voice" in c or "people" in c:
        return "speech"
    return "music" if "music" in c else "sound"


@dataclass(frozen=True)
class Compressed:
    """A clip through the codec: the ``.tlm`` file's bytes and what they decode to."""

    tlm: bytes
    n_q: int
    kbps: float  # the file's size over the clip's duration, header and checksums included
    seconds: float
    audio: np.ndarray  # decoded, float32 [N] at sample_rate
    sample_rate: int


class Compressor:
    """The codec, loaded once, for ``.tlm`` round trips (the demo's Compression tab; needs no LM).

    It runs the codec's own ``compress`` / ``decompress``, so the bytes are exactly what ``tokenlm compress``
    writes and the audio what ``tokenlm decompress`` returns."""

    def __init__(self, codec: str = "codec-16k", precision: str = "auto"):
        from tokenlm.codecs.codec.compress import load_codec

        self.name, self.loaded = codec, load_codec(codec, precision)
        self.sample_rate = self.loaded[0].sample_rate

    def compress(self, audio: Audio, kbps: float = 1.5) -> Compressed:
        """``audio`` (a path or ``(samples, rate)``) at ``kbps`` (1.5, 3 or 6) -> ``Compressed``."""
        import tempfile

        import soundfile as sf
        from tokenlm.codecs.audio import save_audio
        from tokenlm.codecs.codec.compress import compress, decompress
        from tokenlm.codecs.codec.container import bitrate_of

        with tempfile.TemporaryDirectory(prefix="tokenlm-") as tmp:
            tlm, wav = Path(tmp, "a.tlm"), Path(tmp, "b.wav")
            if isinstance(audio, tuple):  # compress reads files: samples go through a wav
                src = save_audio(Path(tmp, "in.wav"), np.asarray(audio[0], np.float32), int(audio[1]))
            else:
                src = Path(audio)
            header = compress(src, tlm, self.name, kbps, loaded=self.loaded)
            decompress(tlm, wav, loaded=self.loaded)
            decoded, sr = sf.read(str(wav), dtype="float32")
            return Compressed(
                tlm.read_bytes(),
                header.n_q,
                bitrate_of(tlm, header),
                header.num_samples / header.sample_rate,
                decoded,
                sr,
            )
