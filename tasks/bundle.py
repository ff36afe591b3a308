"""Bundle a multitask LM run as ``tokenlm/weights/<name>`` (fp16 safetensors, config, text model, model card).

    python -m tokenlm.tasks.bundle ~/.cache/tokenlm/runs/lm-multitask-small --eval-dir ~/.cache/tokenlm/eval

The card records the data, the steps, hours and positions of training, the held-out loss of each task at the
last checkpoint, and the tables of ``tokenlm eval <task>`` found under ``--eval-dir`` (``<task>/<task>_eval.md``,
held-out data only). A bundled model is what ``tokenlm train lm`` continues when its run is not in the cache.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from tokenlm.checkpoint import load_weights, read_model_config, save_model
from tokenlm.errors import TokenlmError
from tokenlm.pretrained import WEIGHTS_DIR, card_section, register

MAX_BYTES = 60 * 2**20
TASK_ORDER = ("asr", "tts", "clone", "separate", "caption", "continue")


def last_eval(run: Path) -> dict:
    """The last held-out row of the run's log (``eval/<task>`` losses)."""
    log = run / "train_log.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
    rows = [r for r in rows if any(k.startswith("eval/") for k in r)]
    return rows[-1] if rows else {}


def model_card(name: str, doc: dict, run: Path, eval_dir: Path | None) -> str:
    meta, cfg = doc.get("meta", {}), doc["config"]
    m, vocab = cfg["model"], cfg["vocab"]
    n_params = sum(v.numel() for v in load_weights(run / "model").values())
    ev = last_eval(run)
    lines = [
        f"# {name}",
        "",
        "One decoder-only Transformer for six audio tasks as prompted token tasks: ASR, TTS, zero-shot voice cloning,",
        "source separation, audio captioning and music continuation (layouts in `tasks/base.py`). It reads and writes",
        f"the first {m['n_streams']} codebooks of codec-16k (3 kbps) under the delay pattern, text as sentencepiece",
        f"pieces of `tokenizer.model`, and {len(vocab.get('languages', []))} language ids.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | {m['n_layers']} layers, width {m['dim']}, {m['n_heads']} heads, RoPE, SwiGLU; {n_params / 1e6:.1f} M parameters |",
        f"| vocabulary | {m['vocab_size']} ids ({', '.join(r[0] for r in vocab['ranges'] if not r[0][-1].isdigit())}, codec.0-{m['n_streams'] - 1}) |",
        f"| training | {meta.get('step', '?')} steps, {meta.get('train_hours', '?')} h on a 2-core CPU, rows of {meta.get('seq_len', '?')} positions (`configs/lm/multitask_small.yaml`) |",
        "| data | the corpus of `tokenlm data build` (real and synthetic speech, music, sound events, mixtures; speaker-, track- and sound-disjoint eval split), tokenized by `tokenlm tokenize --corpus` |",
        "",
        "Training goes on where this model stopped: `tokenlm data build && tokenlm tokenize --corpus -o",
        "~/.cache/tokenlm/shards/multitask && tokenlm train lm --config lm/multitask_small` continues it (step count,",
        "hours and schedule) when its run is not in the cache. The tables below are what it does today, on held-out",
        "data; read them beside the peers in the same tables.",
        "",
    ]
    if ev:
        tasks = [t for t in TASK_ORDER if f"eval/{t}" in ev]
        lines += [
            f"Held-out loss per task at step {ev.get('step')} (nats per target token, eval speakers/tracks/sounds only):",
            "",
            "| " + " | ".join(tasks) + " |",
            "|" + "---|" * len(tasks),
            "| " + " | ".join(f"{ev[f'eval/{t}']:.3f}" for t in tasks) + " |",
            "",
            "![training and held-out loss](curves.png)",
            "",
        ]
    for task in TASK_ORDER:
        md = eval_dir / task / f"{task}_eval.md" if eval_dir else None
        if md is not None and md.is_file():
            body = [x for x in md.read_text().strip().splitlines() if not x.startswith("# ")]  # the report's title
            lines += [f"## `tokenlm eval {task}` (held out)", "", "\n".join(body).strip(), ""]
    return "\n".join(lines)


def bundle(run: Path, name: str = "tokenlm-small", eval_dir: Path | None = None) -> Path:
    """Copy the run's model to ``tokenlm/weights/<name>`` in fp16 with its text model and card; register it."""
    src = run / "model"
    doc = read_model_config(src)
    if doc["kind"] != "lm" or not (src / "tokenizer.model").is_file():
        raise TokenlmError(f"{src}: not a multitask LM folder (kind lm with tokenizer.model)")
    experiments = card_section(WEIGHTS_DIR / name, "Experiments")  # written by hand: kept across bundles
    with tempfile.TemporaryDirectory() as tmp:
        card = Path(tmp) / "README.md"
        card.write_text(model_card(name, doc, run, eval_dir) + ("\n" + experiments if experiments else ""))
        extra = {"README.md": card, "tokenizer.model": src / "tokenizer.model"}
        if (run / "curves.png").is_file():
            extra["curves.png"] = run / "curves.png"
        dest = save_model(
            WEIGHTS_DIR / name, "lm", doc["config"], load_weights(src), meta=doc.get("meta", {}),
            extra_files=extra, dtype=torch.float16,
        )
    size = sum(f.stat().st_size for f in dest.iterdir())
    if size > MAX_BYTES:
        raise TokenlmError(f"{dest}: {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB budget")
    register(name, "lm")
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="bundle a multitask LM run as a tokenlm model")
    p.add_argument("run", help="run folder (with model/, train_log.jsonl, curves.png)")
    p.add_argument("--name", default="tokenlm-small")
    p.add_argument("--eval-dir", default=None, help="folder holding <task>/<task>_eval.md from `tokenlm eval <task>`")
    args = p.parse_args(argv)
    eval_dir = Path(args.eval_dir).expanduser() if args.eval_dir else None
    print(bundle(Path(args.run).expanduser(), args.name, eval_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
