"""``tokenlm demo``: one Gradio page with a tab per task plus compression, over ``tasks.pipeline`` only.

Models are loaded once, at start (``load_models``). When the LM cannot be loaded the page still serves the
Compression tab (it needs only the codec) and every task tab says why the model is not there. Every event
goes through Gradio's queue: the LM's tasks one at a time and the codec's two at a time, with at most
``QUEUE_SIZE`` waiting, so concurrent users wait in line instead of exhausting memory. Errors reach the page
as one readable line (``gr.Error``), never a stack trace: a bad upload, silence, a clip too long or too
short, a task this model cannot do yet. The page binds 127.0.0.1 unless told otherwise and needs no network
(Gradio's own fonts, analytics off); tests/test_demo.py drives it in a real browser and checks that.

A task tab whose pipeline method does not exist (``Pipeline.separate`` / ``caption`` / ``continue_`` were
built after the first three) says "... is not available in this model yet" instead of showing fake output.
"""

from __future__ import annotations

import functools
import inspect
import io
import logging
import os
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
from tokenlm.tasks.pipeline import Compressor, Pipeline, load_mono  # noqa: E402

from tokenlm.errors import TokenlmError  # noqa: E402

log = logging.getLogger("tokenlm.demo")

EXAMPLES = Path(__file__).resolve().parent.parent / "tokenlm" / "examples"
SPEECH, TUNE, MIXTURE = (str(EXAMPLES / n) for n in ("speech.flac", "tune.flac", "mixture.flac"))

MAX_SECONDS = 30.0  # task inputs: LM work grows with length, and a demo answers in seconds
MAX_COMPRESS_SECONDS = 300.0  # the codec streams at > 100x real time, but the page holds both versions
VOICE_SECONDS = (3.0, 10.0)  # the cloning prompt (the pipeline uses its first few seconds)
MIN_SECONDS = 0.2
SILENCE_RMS = 1e-4  # about -80 dBFS
MAX_TEXT_CHARS = 400
KBPS = ("1.5", "3", "6")
LM_CONCURRENCY, CODEC_CONCURRENCY, QUEUE_SIZE = 1, 2, 64
MAX_UPLOAD = "50mb"
FILE_TTL_S = 600.0  # our copies of outputs; Gradio serves its own from its cache
STREAM_FRAMES = 25  # TTS audio is sent in pieces of 0.5 s (at 50 frames/s) as it is generated

NOT_YET = "{} is not available in this model yet"


@dataclass
class Models:
    """What the page runs: the codec (always) and the LM pipeline (None, with the reason, when it failed)."""

    compressor: Compressor
    pipe: Pipeline | None
    lm_name: str
    lm_error: str | None = None


def load_models(model: str = "tokenlm-small", codec: str = "codec-16k") -> Models:
    """Load the codec and the LM once. A missing or broken LM is not fatal: compression works without it."""
    compressor = Compressor(codec)
    compressor.compress((np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1, 16000))  # warm-up
    try:
        return Models(compressor, Pipeline.from_pretrained(model, codec), model)
    except Exception as e:  # any failure to load the LM leaves the codec's tab working; the page says why
        reason = str(e) if isinstance(e, TokenlmError) else f"{type(e).__name__}: {e}"
        log.warning("the LM %s is not available (%s); serving compression only", model, reason)
        return Models(compressor, None, model, reason)


# --------------------------------------------------------------------------- errors as one readable line


def readable(fn):
    """Run a handler; a ``TokenlmError`` becomes its message in the page, anything else a short line (the
    traceback goes to the server's log only). Generators stay generators, so streaming still streams."""

    def fail(e: Exception):
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, TokenlmError):
            return gr.Error(str(e), print_exception=False)
        log.exception("demo handler %s failed", fn.__name__)
        first = (str(e).strip().splitlines() or [""])[0]
        return gr.Error(f"something went wrong ({type(e).__name__}: {first})", print_exception=False)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args, **kw):
            try:
                yield from fn(*args, **kw)
            except Exception as e:
                raise fail(e) from None

        return gen

    @functools.wraps(fn)
    def call(*args, **kw):
        try:
            return fn(*args, **kw)
        except Exception as e:
            raise fail(e) from None

    return call


# --------------------------------------------------------------------------- the handlers


class Demo:
    """The page's handlers over ``Models``; each takes the components' values and returns theirs."""

    def __init__(self, models: Models):
        self.m = models
        self.files = tempfile.TemporaryDirectory(prefix="tokenlm-demo-")  # outputs; gone at exit

    def outfile(self, name: str) -> Path:
        """A fresh path for one output file. Outputs are handed to Gradio as files of their own because
        Gradio writes returned arrays to a path named by their content, in place: two concurrent requests
        with the same result (the same example clip) would rewrite a file while the other is downloading it.
        Files of ours older than ``FILE_TTL_S`` are removed here (Gradio has its own copy by then)."""
        now = time.time()
        for old in Path(self.files.name).iterdir():
            try:
                if now - old.stat().st_mtime > FILE_TTL_S:
                    old.unlink()
            except FileNotFoundError:  # another request removed it first
                pass
        return Path(self.files.name, f"{uuid.uuid4().hex[:12]}-{name}")

    def wav_file(self, x: np.ndarray, name: str = "audio.wav") -> str:
        path = self.outfile(name)
        sf.write(str(path), np.clip(x, -1.0, 1.0), self.sr, subtype="PCM_16")
        return str(path)

    # ------------------------------------------------------------------ checks
    def lm(self) -> Pipeline:
        if self.m.pipe is None:
            raise TokenlmError(f"the model is not available ({self.m.lm_error}); the Compression tab works without it")
        return self.m.pipe

    def task(self, method: str, title: str):
        """The pipeline's method for a task, or the "not available in this model yet" message."""
        fn = getattr(self.lm(), method, None)
        if fn is None:
            raise TokenlmError(NOT_YET.format(title))
        return fn

    def clip(self, audio, what: str = "clip", seconds: tuple[float, float] = (MIN_SECONDS, MAX_SECONDS)) -> np.ndarray:
        """An uploaded or recorded clip -> mono float32 at the codec's rate, or a one-line reason it is unusable."""
        if audio is None:
            raise TokenlmError(f"upload or record a {what} first")
        try:
            wav = load_mono(audio, self.m.compressor.sample_rate)
        except TokenlmError as e:  # the server's temporary path means nothing to the user: name the file only
            msg = str(e).replace(audio, Path(audio).name) if isinstance(audio, str) else str(e)
            raise TokenlmError(msg) from None
        lo, hi = seconds
        length = wav.size / self.m.compressor.sample_rate
        if length > hi:
            raise TokenlmError(f"the {what} is {length:.1f} s long; this demo takes at most {hi:g} s")
        if length < lo:
            raise TokenlmError(f"the {what} is {length:.2f} s long; give at least {lo:g} s")
        if float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) < SILENCE_RMS:
            raise TokenlmError(f"the {what} is silent")
        return wav

    def text(self, text: str | None) -> str:
        text = " ".join((text or "").split())
        if not text:
            raise TokenlmError("type some text to speak")
        if len(text) > MAX_TEXT_CHARS:
            raise TokenlmError(f"the text has {len(text)} characters; this demo speaks at most {MAX_TEXT_CHARS}")
        return text

    @property
    def sr(self) -> int:
        return self.m.compressor.sample_rate

    # ------------------------------------------------------------------ tasks
    def asr(self, audio, progress=gr.Progress()):
        pipe = self.lm()
        wav = self.clip(audio)
        _progress(progress, 0.1, "transcribing")
        out = pipe.asr((wav, self.sr))
        return out.text or "(no words recognised)", out.language or ""

    def tts(self, text, language, seed, progress=gr.Progress()):
        pipe = self.lm()
        text = self.text(text)
        _progress(progress, 0.0, "generating speech")
        yield from self._stream(
            pipe.tts_stream(text, language=language or "en", seed=int(seed or 0), chunk_frames=STREAM_FRAMES)
        )

    def clone(self, voice, voice_text, text, language, seed, progress=gr.Progress()):
        pipe = self.lm()
        prompt = self.clip(voice, "voice prompt", VOICE_SECONDS)
        text = self.text(text)
        _progress(progress, 0.0, "generating speech in the prompt's voice")
        stream = pipe.tts_stream(
            text,
            voice=(prompt, self.sr),
            voice_text=(voice_text or "").strip() or None,
            language=language or "en",
            seed=int(seed or 0),
            chunk_frames=STREAM_FRAMES,
        )
        yield from self._stream(stream)

    def _stream(self, chunks):
        """(chunk to play now, skip) while generating; then (skip, the whole speech) for replay and download."""
        done = []
        for chunk in chunks:
            done.append(chunk)
            yield wav_bytes(chunk, self.sr), gr.skip()
        if not done:
            raise TokenlmError("the model produced no audio for this text")
        yield gr.skip(), self.wav_file(np.concatenate(done), "speech.wav")

    def separate(self, audio, target, progress=gr.Progress()):
        fn = self.task("separate", "Separation")
        wav = self.clip(audio, "mixture")
        _progress(progress, 0.1, f"separating {target}")
        out = fn((wav, self.sr), target=target)
        return self.wav_file(out[target], f"{target}.wav"), self.wav_file(out["rest"], "rest.wav")

    def caption(self, audio, progress=gr.Progress()):
        fn = self.task("caption", "Captioning")
        wav = self.clip(audio)
        _progress(progress, 0.1, "describing")
        out = fn((wav, self.sr))
        return out["caption"] or "(no caption)", out["class"]

    def continue_(self, audio, seconds, seed, progress=gr.Progress()):
        fn = self.task("continue_", "Music continuation")
        wav = self.clip(audio, "prompt")
        _progress(progress, 0.1, f"continuing for {float(seconds):g} s")
        return self.wav_file(fn((wav, self.sr), seconds=float(seconds), seed=int(seed or 0)), "continued.wav")

    # ------------------------------------------------------------------ compression
    def compress(self, audio, kbps, progress=gr.Progress()):
        """-> (summary, original, decoded, the .tlm file, spectrograms of both)."""
        wav = self.clip(audio, seconds=(MIN_SECONDS, MAX_COMPRESS_SECONDS))
        _progress(progress, 0.1, f"compressing to {kbps} kbps")
        out = self.m.compressor.compress(audio, float(kbps))
        _progress(progress, 0.8, "drawing spectrograms")
        tlm = self.outfile(f"{Path(str(audio)).stem[:40]}.tlm")
        tlm.write_bytes(out.tlm)
        pcm_bytes = 2 * wav.size  # the same clip as 16-bit mono PCM at the codec's rate
        summary = (
            f"**{len(out.tlm):,} bytes** in the .tlm file for {out.seconds:.2f} s of audio: **{out.kbps:.2f} kbps** "
            f"(header and checksums included), {out.n_q} codebooks. As 16-bit {self.sr // 1000} kHz PCM it is "
            f"{pcm_bytes:,} bytes ({pcm_bytes / len(out.tlm):.0f}x larger)."
        )
        image = self.outfile("spectrograms.png")
        spectrograms([("original", wav), (f"decoded ({kbps} kbps)", out.audio)], self.sr, image)
        return summary, audio, self.wav_file(out.audio, "decoded.wav"), str(tlm), str(image)


def wav_bytes(x: np.ndarray, sample_rate: int) -> bytes:
    """A piece of streamed speech as a 16-bit WAV in memory (Gradio streams bytes as they are, no file)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _progress(progress, fraction: float, desc: str) -> None:
    if progress is not None:  # None when a handler is called directly, outside a Gradio event
        progress(fraction, desc=desc)


def spectrograms(rows: list[tuple[str, np.ndarray]], sample_rate: int, path: Path) -> None:
    """Log-magnitude spectrograms of ``(title, samples)`` side by side, on one colour scale, to a PNG.

    Drawn on a ``Figure`` of its own (not pyplot, whose global state is not thread-safe under the queue)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy.signal import stft

    specs = [20 * np.log10(np.abs(stft(x, sample_rate, nperseg=512, noverlap=384)[2]) + 1e-7) for _, x in rows]
    top = max(float(s.max()) for s in specs)
    fig = Figure(figsize=(4.2 * len(rows), 2.8), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(rows), sharey=True)
    for ax, (title, x), s in zip(np.atleast_1d(axes), rows, specs):
        extent = (0, x.size / sample_rate, 0, sample_rate / 2000)
        ax.imshow(s, origin="lower", aspect="auto", extent=extent, vmin=top - 80, vmax=top, cmap="magma")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("s")
    np.atleast_1d(axes)[0].set_ylabel("kHz")
    fig.tight_layout()
    fig.savefig(path)


# --------------------------------------------------------------------------- the page


def build_app(models: Models):
    """The Gradio ``Blocks`` page (not launched)."""
    demo = Demo(models)
    pipe = models.pipe
    langs = list(pipe.lm.vocab.languages) if pipe is not None else ["en"]
    lang = "en" if "en" in langs else langs[0]
    name = Path(models.lm_name).name  # a folder's name, not the server's path
    lm_state = f"LM `{name}`" if pipe is not None else f"**the model is not available** ({models.lm_error})"

    def audio_in(label: str, sources=("upload", "microphone")):
        return gr.Audio(sources=list(sources), type="filepath", label=label)

    def notice(method: str | None, title: str):
        """A line at the top of a task tab that cannot run, saying why."""
        if pipe is None:
            gr.Markdown(f"⚠️ The model is not available ({models.lm_error}). The Compression tab works without it.")
        elif method and getattr(pipe, method, None) is None:
            gr.Markdown(f"⚠️ {NOT_YET.format(title)}.")

    lm_events = dict(concurrency_limit=LM_CONCURRENCY, concurrency_id="lm")
    with gr.Blocks(title="tokenlm demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            "# tokenlm\nAll audio as discrete tokens: one language model for many audio tasks, and a codec that "
            f"compresses audio to `.tlm` token files. Running offline on this machine: {lm_state}, "
            f"codec `{models.compressor.name}`."
        )
        with gr.Tab("Speech recognition", id="asr"):
            notice(None, "Speech recognition")
            with gr.Row():
                a = audio_in("speech")
                with gr.Column():
                    text, language = gr.Textbox(label="transcript"), gr.Textbox(label="language")
            btn = gr.Button("Transcribe", variant="primary")
            gr.Examples([[SPEECH]], inputs=[a])
            btn.click(readable(demo.asr), [a], [text, language], api_name="asr", **lm_events)

        with gr.Tab("Text to speech", id="tts"):
            notice(None, "Text to speech")
            t = gr.Textbox(label="text", lines=3)
            with gr.Row():
                tl = gr.Dropdown(langs, value=lang, label="language")
                ts = gr.Number(0, precision=0, label="seed")
            btn = gr.Button("Speak", variant="primary")
            with gr.Row():
                live = gr.Audio(label="speech, playing while it is generated", streaming=True, autoplay=True)
                full = gr.Audio(label="the whole speech (when done)", interactive=False, elem_id="tts-whole")
            gr.Examples([["The cat sat on the mat.", lang], ["Hello there, how are you today?", lang]], inputs=[t, tl])
            btn.click(readable(demo.tts), [t, tl, ts], [live, full], api_name="tts", **lm_events)

        with gr.Tab("Voice cloning", id="clone"):
            notice(None, "Voice cloning")
            with gr.Row():
                v = audio_in(f"voice prompt ({VOICE_SECONDS[0]:g}-{VOICE_SECONDS[1]:g} s): upload or record")
                with gr.Column():
                    vt = gr.Textbox(label="what the prompt says (optional: the model transcribes it)")
                    ct = gr.Textbox(label="text to speak in that voice", lines=2)
                    with gr.Row():
                        cl = gr.Dropdown(langs, value=lang, label="language")
                        cs = gr.Number(0, precision=0, label="seed")
            btn = gr.Button("Speak in this voice", variant="primary")
            with gr.Row():
                live = gr.Audio(label="cloned speech, playing while it is generated", streaming=True, autoplay=True)
                full = gr.Audio(label="the whole speech (when done)", interactive=False)
            gr.Examples([[SPEECH, "", "The cat sat on the mat."]], inputs=[v, vt, ct])
            btn.click(readable(demo.clone), [v, vt, ct, cl, cs], [live, full], api_name="clone", **lm_events)

        with gr.Tab("Separation", id="separate"):
            notice("separate", "Separation")
            with gr.Row():
                a = audio_in("mixture")
                target = gr.Radio(["speech", "music", "background"], value="speech", label="keep")
            btn = gr.Button("Separate", variant="primary")
            with gr.Row():
                kept, rest = gr.Audio(label="kept source"), gr.Audio(label="the rest (mixture - kept)")
            gr.Examples([[MIXTURE, "speech"], [MIXTURE, "music"]], inputs=[a, target])
            btn.click(readable(demo.separate), [a, target], [kept, rest], api_name="separate", **lm_events)

        with gr.Tab("Captioning", id="caption"):
            notice("caption", "Captioning")
            with gr.Row():
                a = audio_in("clip")
                with gr.Column():
                    cap, cls = gr.Textbox(label="caption"), gr.Textbox(label="broad class")
            btn = gr.Button("Describe", variant="primary")
            gr.Examples([[TUNE], [SPEECH], [MIXTURE]], inputs=[a])
            btn.click(readable(demo.caption), [a], [cap, cls], api_name="caption", **lm_events)

        with gr.Tab("Music continuation", id="continue"):
            notice("continue_", "Music continuation")
            with gr.Row():
                a = audio_in("music prompt")
                with gr.Column():
                    secs = gr.Slider(1, 20, value=5, step=1, label="seconds to add")
                    ms = gr.Number(0, precision=0, label="seed")
            btn = gr.Button("Continue", variant="primary")
            out = gr.Audio(label="prompt + continuation")
            gr.Examples([[TUNE]], inputs=[a])
            btn.click(readable(demo.continue_), [a, secs, ms], [out], api_name="continue", **lm_events)

        with gr.Tab("Compression", id="compress"):
            gr.Markdown(
                "Compress a clip to a `.tlm` token file with the codec, decode it again, and compare. "
                "The same as `tokenlm compress IN -o OUT.tlm --kbps K` and `tokenlm decompress`."
            )
            with gr.Row():
                a = audio_in("audio to compress")
                kbps = gr.Radio(list(KBPS), value="1.5", label="bitrate (kbps)")
            btn = gr.Button("Compress", variant="primary")
            summary = gr.Markdown(elem_id="compress-summary")
            with gr.Row():
                orig = gr.Audio(label="original", interactive=False, elem_id="compress-original")
                dec = gr.Audio(label="decoded", interactive=False, elem_id="compress-decoded")
            with gr.Row():
                spec = gr.Image(label="spectrograms", type="filepath", interactive=False)
                tlm = gr.File(label="the .tlm file", interactive=False)
            gr.Examples([[SPEECH, "1.5"], [TUNE, "6"]], inputs=[a, kbps])
            btn.click(
                readable(demo.compress),
                [a, kbps],
                [summary, orig, dec, tlm, spec],
                api_name="compress",
                concurrency_limit=CODEC_CONCURRENCY,
                concurrency_id="codec",
            )
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return app


def launch(app, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve ``app`` on ``host:port``; with ``block=False`` return at once (tests, benchmarks)."""
    app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        share=False,
        quiet=True,
        show_error=False,  # our messages arrive as gr.Error; other exceptions never show their traceback
        max_file_size=MAX_UPLOAD,
        allowed_paths=[str(EXAMPLES)],
        ssr_mode=False,
        mcp_server=False,
        enable_monitoring=False,
        footer_links=["api"],
    )
    return app


def check_port(host: str, port: int) -> None:
    """Fail before loading models when the address cannot be bound (bad host, port taken)."""
    if not 0 < port < 65536:
        raise TokenlmError(f"--port {port}: not a port number (1-65535)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise TokenlmError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None


def cli(args) -> int:
    check_port(args.host, args.port)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests, not news to the user
    models = load_models(args.model)
    app = build_app(models)
    log.info(
        "tokenlm demo on http://%s:%d (%s); Ctrl+C stops it",
        args.host,
        args.port,
        f"LM {args.model}" if models.pipe else f"LM not available: {models.lm_error}",
    )
    launch(app, args.host, args.port)
    return 0
