"""The ``tokenlm`` command: one entry point, a sub-command per job.

Argument parsing lives here (fast ``--help``, no torch import); each sub-command runs a
``module:function`` target imported lazily, called with the parsed ``argparse.Namespace`` and
returning an exit code (``None`` = 0). A target whose module does not exist yet makes the command
say so and exit 2. ``TokenlmError`` becomes one line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable

from .errors import NotBuiltError, TokenlmError

KBPS_CHOICES = ("1.5", "3", "6")
Adder = Callable[[argparse.ArgumentParser], None]


def _parser(sub, name: str, help: str, example: str, target: str, add: Adder | None = None):
    p = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if add:
        add(p)
    _common(p)
    p.set_defaults(_target=target)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--seed", type=int, default=0, help="random seed; the same seed repeats a run (default 0)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _group(sub, name: str, help: str, children: dict[str, tuple[str, str, str, Adder | None]]):
    examples = "\n".join(f"  {ex}" for _, ex, _, _ in children.values())
    p = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"examples:\n{examples}\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inner = p.add_subparsers(dest=f"{name}_what", metavar="WHAT", required=True)
    for child, (chelp, example, target, add) in children.items():
        _parser(inner, child, chelp, example, target, add)


# --------------------------------------------------------------------------- argument sets


def _compress_args(p):
    p.add_argument("input", help="audio file (wav, flac, ogg, mp3, ...)")
    p.add_argument("-o", "--output", required=True, help="output .tlm file")
    p.add_argument("--kbps", default="1.5", choices=KBPS_CHOICES, help="bitrate (default 1.5)")
    p.add_argument("--model", default="codec-16k", help="bundled codec name or model folder")
    _precision(p)


def _precision(p):
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="inference precision (auto: bf16 where the CPU has native bf16, ~2x faster)",
    )


def _decompress_args(p):
    p.add_argument("input", help=".tlm file written by `tokenlm compress`")
    p.add_argument("-o", "--output", required=True, help="output audio file (.wav or .flac)")
    p.add_argument("--model", default=None, help="codec folder, if not the bundled one named in the file")
    _precision(p)


def _in_model(p, model: str):
    p.add_argument("input", help="audio file")
    p.add_argument("--model", default=model, help=f"bundled model name or folder (default {model})")


def _asr_args(p):
    _in_model(p, "tokenlm-small")
    p.add_argument("--json", action="store_true", help="print JSON (text, language, windows) instead of the text")


def _tts_args(p, voice_required: bool = False):
    p.add_argument("text", help="text to speak")
    p.add_argument("-o", "--output", required=True, help="output .wav")
    p.add_argument(
        "--voice", required=voice_required, default=None, help="1-4 s of a voice to clone (zero-shot); longer clips are cut"
    )
    p.add_argument("--voice-text", default=None, help="transcript of the voice clip (default: the model transcribes it)")
    p.add_argument("--language", default="en", help="language of the text (ISO 639-1, default en)")
    p.add_argument("--model", default="tokenlm-small", help="bundled LM name or folder (default tokenlm-small)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)


def _separate_args(p):
    _in_model(p, "tokenlm-small")
    p.add_argument("-o", "--output", required=True, help="output folder: <target>.wav and rest.wav (mixture - target)")
    p.add_argument(
        "--target", default="speech", choices=("speech", "music", "background"), help="the source to keep (default speech)"
    )


def _caption_args(p):
    _in_model(p, "tokenlm-small")
    p.add_argument("--json", action="store_true", help="print JSON (caption, broad class)")


def _continue_args(p):
    _in_model(p, "tokenlm-small")
    p.add_argument("-o", "--output", required=True, help="output .wav (prompt + continuation)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds to generate (default 10)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1: off; e.g. 3)")


def _demo_args(p):
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--model",
        default="tokenlm-small",
        help="LM name or folder (default tokenlm-small); if it cannot be loaded, only the Compression tab works",
    )


def _bench_demo_args(p):
    _bench_args(p)
    p.add_argument("--model", default="tokenlm-small", help="LM name or folder the demo serves (default tokenlm-small)")
    p.add_argument("--requests", type=int, default=20, help="concurrent requests per endpoint (default 20; --quick: 5)")


def _data_build_args(p):
    p.add_argument("--recipe", default="small", help="corpus recipe (default small)")
    p.add_argument("--root", default=None, help="where data goes (default ~/.cache/tokenlm/data)")
    p.add_argument("--only", default=None, help="comma-separated parts to build (e.g. speech_real,music)")


def _data_stats_args(p):
    p.add_argument("--root", default=None, help="data root (default ~/.cache/tokenlm/data)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", default=None, help="write the duration histogram to this PNG")


def _tokenize_args(p):
    p.add_argument("manifest", nargs="?", help="JSONL manifest (from `tokenlm data build`)")
    p.add_argument("-o", "--output", required=True, help="output shard folder")
    p.add_argument(
        "--corpus", action="store_true", help="every part of the built corpus, one shard folder each, + text model"
    )
    p.add_argument("--parts", nargs="*", default=None, help="with --corpus: only these parts")
    p.add_argument("--text-pieces", type=int, default=2000, help="with --corpus: sentencepiece vocabulary size")
    p.add_argument("--codec", default="codec-16k", help="codec model (name or folder)")
    p.add_argument("--semantic", action="store_true", help="also write semantic units")
    p.add_argument("--semantic-model", default="semantic-16k")


def _train_args(default_config: str):
    def add(p):
        p.add_argument("--config", default=default_config, help=f"YAML config (default {default_config})")
        p.add_argument("--out", default=None, help="run folder (default ~/.cache/tokenlm/runs/<name>)")
        p.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes")
        p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
        p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
        p.add_argument(
            "--init",
            default=None,
            help="warm-start weights from this model (name or folder); codec: 'none' trains from scratch",
        )
        p.add_argument("--manifest", default=None, help="training manifest (default: from the config)")

    return add


def _eval_args(model: str):
    def add(p):
        p.add_argument("--model", default=model, help=f"model name or folder (default {model})")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--out", default=None, help="folder for the report, tables and plots")
        p.add_argument("--limit", type=int, default=None, help="evaluate at most this many clips")

    return add


def _task_eval_args(judges: bool):
    def add(p):
        _eval_args("tokenlm-small")(p)
        if judges:
            p.add_argument(
                "--judges",
                default="all",
                choices=("all", "none"),
                help="none: score our model alone, without the Whisper/pocketsphinx/DNSMOS/espeak-ng judges and peers",
            )

    return add


def _continue_eval_args(p):
    _task_eval_args(judges=False)(p)
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1: off; e.g. 3)")


def _codec_eval_args(p):
    _eval_args("codec-16k")(p)
    p.add_argument(
        "--peer",
        default="auto",
        help="EnCodec-architecture peer: a model folder, 'none', or 'auto' (the run in the cache, when trained)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="add rows for the model exported to ONNX with int8 MLPs (onnxruntime; the fast CPU path)",
    )


def _semantic_eval_args(p):
    _eval_args("semantic-16k")(p)
    p.add_argument(
        "--manifest",
        default=None,
        help="manifest with an eval split and phone files (default: the built-in espeak corpus)",
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="also train a small phone classifier on the features of training voices and score it on the "
        "held-out ones (how much phone information the features hold, before any clustering; ~2 min)",
    )


def _bench_args(p):
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--quick", action="store_true", help="smaller sizes (for smoke tests)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokenlm",
        description="tokenlm: all audio as discrete tokens, one language model for many audio tasks.",
        epilog="example:\n  tokenlm compress speech.wav -o speech.tlm --kbps 1.5\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"tokenlm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _parser(
        sub,
        "compress",
        "compress audio to a .tlm token file",
        "tokenlm compress speech.wav -o speech.tlm --kbps 1.5",
        "tokenlm.codecs.codec.compress:cli_compress",
        _compress_args,
    )
    _parser(
        sub,
        "decompress",
        "decode a .tlm token file to audio",
        "tokenlm decompress speech.tlm -o speech.wav",
        "tokenlm.codecs.codec.compress:cli_decompress",
        _decompress_args,
    )
    _parser(
        sub,
        "asr",
        "transcribe speech",
        "tokenlm asr speech.wav",
        "tokenlm.tasks.commands:cli_asr",
        _asr_args,
    )
    _parser(
        sub,
        "tts",
        "speak text, optionally in the voice of a prompt clip",
        'tokenlm tts "Hello there." -o hello.wav --voice prompt.wav',
        "tokenlm.tasks.commands:cli_tts",
        _tts_args,
    )
    _parser(
        sub,
        "clone",
        "speak text in the voice of a prompt clip (zero-shot voice cloning)",
        'tokenlm clone "Hello there." --voice prompt.wav -o hello.wav',
        "tokenlm.tasks.commands:cli_tts",
        lambda p: _tts_args(p, voice_required=True),
    )
    _parser(
        sub,
        "separate",
        "separate a mixture into sources",
        "tokenlm separate mix.wav -o sources/",
        "tokenlm.tasks.commands:cli_separate",
        _separate_args,
    )
    _parser(
        sub,
        "caption",
        "describe the sounds in a clip",
        "tokenlm caption rain.wav",
        "tokenlm.tasks.commands:cli_caption",
        _caption_args,
    )
    _parser(
        sub,
        "continue",
        "continue a piece of music",
        "tokenlm continue tune.wav -o longer.wav --seconds 10",
        "tokenlm.tasks.commands:cli_continue",
        _continue_args,
    )
    _parser(
        sub,
        "demo",
        "start the Gradio demo (one tab per task)",
        "tokenlm demo --port 7860",
        "tokenlm.apps.demo:cli",
        _demo_args,
    )
    _group(
        sub,
        "data",
        "build and inspect the corpus",
        {
            "build": (
                "fetch packages and build the corpus manifests",
                "tokenlm data build --recipe small",
                "tokenlm.corpus.build:cli_build",
                _data_build_args,
            ),
            "stats": (
                "hours, speakers and languages per split",
                "tokenlm data stats --json",
                "tokenlm.corpus.stats:cli_stats",
                _data_stats_args,
            ),
        },
    )
    _parser(
        sub,
        "tokenize",
        "turn a manifest into token shards",
        "tokenlm tokenize --corpus -o ~/.cache/tokenlm/shards/multitask",
        "tokenlm.data:cli_tokenize",
        _tokenize_args,
    )
    _group(
        sub,
        "train",
        "train a model",
        {
            "codec": (
                "train the RVQ codec",
                "tokenlm train codec --config codec/small --max-minutes 60",
                "tokenlm.codecs.codec.train:cli",
                _train_args("codec/small"),
            ),
            "semantic": (
                "train the semantic tokenizer",
                "tokenlm train semantic --config semantic/small",
                "tokenlm.codecs.semantic.train:cli",
                _train_args("semantic/small"),
            ),
            "lm": (
                "train the token LM",
                "tokenlm train lm --config lm/small",
                "tokenlm.train:cli",
                _train_args("lm/small"),
            ),
        },
    )
    _group(
        sub,
        "eval",
        "evaluate a model against its peers",
        {
            "codec": (
                "codec vs Opus, Codec2 and EnCodec",
                "tokenlm eval codec --json",
                "tokenlm.codecs.codec.evaluate:cli",
                _codec_eval_args,
            ),
            "semantic": (
                "semantic units: PNMI, purity, speaker invariance",
                "tokenlm eval semantic --json",
                "tokenlm.codecs.semantic.evaluate:cli",
                _semantic_eval_args,
            ),
            "asr": (
                "WER/CER per language on held-out speech, beside Whisper and pocketsphinx (--limit: per language)",
                "tokenlm eval asr --limit 40",
                "tokenlm.tasks.evaluate:cli_asr",
                _task_eval_args(judges=True),
            ),
            "tts": (
                "TTS: Whisper WER, DNSMOS and speed, beside the codec ceiling and espeak-ng (--limit: sentences)",
                "tokenlm eval tts --limit 20",
                "tokenlm.tasks.evaluate:cli_tts",
                _task_eval_args(judges=True),
            ),
            "clone": (
                "voice cloning: speaker similarity on held-out speakers (--limit: trials per speaker)",
                "tokenlm eval clone --limit 5",
                "tokenlm.tasks.evaluate:cli_clone",
                _task_eval_args(judges=False),
            ),
            "separate": (
                "speech separation: SI-SDRi, PESQ, DNSMOS, Whisper WER beside noisereduce and the codec ceiling "
                "(--limit: per mixture type)",
                "tokenlm eval separate --limit 20",
                "tokenlm.tasks.evaluate_audio:cli_separate",
                _task_eval_args(judges=True),
            ),
            "caption": (
                "captioning: broad-class accuracy and content-word F1 beside an MFCC k-NN and YAMNet "
                "(--limit: per kind)",
                "tokenlm eval caption --limit 30",
                "tokenlm.tasks.evaluate_audio:cli_caption",
                _task_eval_args(judges=True),
            ),
            "continue": (
                "music continuation: key, tempo and seam against the prompt, beside a ceiling and a floor "
                "(--limit: segments)",
                "tokenlm eval continue --limit 10",
                "tokenlm.tasks.evaluate_audio:cli_continue",
                _continue_eval_args,
            ),
        },
    )
    _group(
        sub,
        "bench",
        "measure speed",
        {
            "codec": (
                "codec encode/decode real-time factor",
                "tokenlm bench codec --json",
                "tokenlm.bench.codec:cli",
                _bench_args,
            ),
            "rvq": (
                "RVQ encode vs vector-quantize-pytorch",
                "tokenlm bench rvq --json",
                "tokenlm.bench.kernels:cli_rvq",
                _bench_args,
            ),
            "attention": (
                "attention kernels vs naive and SDPA",
                "tokenlm bench attention --json",
                "tokenlm.bench.kernels:cli_attention",
                _bench_args,
            ),
            "lm": (
                "LM training/generation speed vs HF GPT-2",
                "tokenlm bench lm --json",
                "tokenlm.bench.lm:cli",
                _bench_args,
            ),
            "demo": (
                "the demo under concurrent load: errors, p50/p95 latency, peak memory",
                "tokenlm bench demo --json",
                "tokenlm.bench.demo:cli",
                _bench_demo_args,
            ),
        },
    )
    return p


def _resolve(target: str, command: str):
    module, func = target.split(":")
    if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None or importlib.util.find_spec(module) is None:
        raise NotBuiltError(f"`tokenlm {command}` is not built yet ({module} does not exist)")
    fn = getattr(importlib.import_module(module), func, None)
    if fn is None:
        raise NotBuiltError(f"`tokenlm {command}` is not built yet ({target} does not exist)")
    return fn


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .utils import setup_logging

    setup_logging(args.log_level)
    command = " ".join(v for k, v in vars(args).items() if k == "command" or k.endswith("_what"))
    try:
        fn = _resolve(args._target, command)
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        from .utils import seed_everything

        seed_everything(args.seed)
        return int(fn(args) or 0)
    except TokenlmError as e:
        print(f"tokenlm {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tokenlm {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        logging.shutdown()


if __name__ == "__main__":
    sys.exit(main())
