"""Bundle a trained semantic tokenizer as ``tokenlm/weights/<name>`` (fp16) with a model card.

Used once per release, by hand:
``python -m tokenlm.codecs.semantic.bundle RUN/model EVAL_DIR/semantic_eval.json "training notes" EVAL_DIR/units.png``.
The card's numbers come from the eval report passed in (``tokenlm eval semantic --json``), never typed.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from tokenlm.checkpoint import load_weights, read_model_config, save_model
from tokenlm.errors import TokenlmError
from tokenlm.pretrained import WEIGHTS_DIR, card_section, register

MAX_BYTES = 30 * 2**20
SAME, DIFF = "same_sentence_cross_voice", "diff_sentence_same_voice"


def probe_table(report: dict) -> str:
    """The supervised phone probe's table (``tokenlm eval semantic --probe``), or nothing when it was not run."""
    if "probe" not in report:
        return ""
    pr = report["probe"]
    rows = "\n".join(
        f"| {label} | {pr[k]['pnmi']:.3f} | {pr[k]['phone_purity']:.3f} | {pr[k]['accuracy']:.3f} |"
        for k, label in (("model", "this model's unit layer"), ("mfcc_context", "MFCC + deltas, +-4 frames"))
    )
    return f"""
How much phone information the features hold before any clustering (`--probe`: an MLP phone classifier trained
on {pr["train_clips"]} training-voice clips, scored on the held-out ones):

| probe on | PNMI | phone purity | frame accuracy |
|---|---|---|---|
{rows}
"""


def model_card(name: str, doc: dict, report: dict, train_info: str) -> str:
    cfg, meta = doc["config"], doc.get("meta", {})
    si, base = report["speaker_invariance"], report["mfcc_kmeans"]
    bsi = base["speaker_invariance"]
    norm = (
        " after per-utterance mean/variance normalisation over time" if cfg.get("unit_norm", "none") == "cmvn" else ""
    )
    targets = "of MFCC + deltas" if meta.get("iteration") == 1 else "of a teacher model's layer"
    return f"""# {name}: semantic units (HuBERT-style, trained on 2 CPU cores)

One stream of discrete speech units, `codes [B, 1, T]` at {report["frame_rate"]:g} Hz (one unit per codec
frame), {cfg["codebook_size"]} units: k-means of Transformer layer {cfg["unit_layer"]}{norm} of a
{cfg["n_layers"]}-layer, d={cfg["dim"]} encoder on 80-bin log-mel frames (hop {cfg["hop_length"]} at
{cfg["sample_rate"]} Hz).
Not decodable to audio. Load with `tokenlm.pretrained.load("{name}")`.

## Training
{train_info}

Masked prediction (HuBERT) of k-means targets ({targets}), {meta.get("step")} steps in this run.
Unit layer chosen by PNMI on *training* voices: {meta.get("layer_pnmi_training_voices")}.

## Measured (`tokenlm eval semantic`, held-out voices)
{report["eval_clips"]} clips / {report["eval_frames"]} frames of espeak-ng accents and variants that training never
heard ({", ".join(report["eval_voices"])}); frame labels are espeak-ng's own phone events.

| metric | this model | MFCC k-means ({cfg["codebook_size"]} units, same run) |
|---|---|---|
| PNMI | {report["pnmi"]:.3f} | {base["pnmi"]:.3f} |
| phone purity | {report["phone_purity"]:.3f} | {base["phone_purity"]:.3f} |
| cluster purity | {report["cluster_purity"]:.3f} | {base["cluster_purity"]:.3f} |
| unit edit distance, same sentence, 2 voices | {si[SAME]:.3f} | {bsi[SAME]:.3f} |
| unit edit distance, 2 sentences, same voice | {si[DIFF]:.3f} | {bsi[DIFF]:.3f} |

PNMI is {report["pnmi"] / max(base["pnmi"], 1e-9):.2f}x the MFCC k-means floor (its k-means fitted on training clips
drawn like this model's own units: equal shares of the espeak corpus and the corpus's synthetic and real speech).
{probe_table(report)}
## Limits
Evaluated on synthetic (espeak-ng) English only: there are no phone timings for the real speech here, and
espeak-ng voices share one synthesis engine (a speaker-embedding model hears its variants as nearly one
speaker), so "held-out voices" are held-out accents and variants, not new human speakers.
Small model, short CPU training: far from HuBERT-base units.
"""


def bundle(
    model_folder: str | Path, report: dict, train_info: str, name: str = "semantic-16k", plot: str | Path | None = None
) -> Path:
    """Copy ``model_folder`` to ``tokenlm/weights/<name>`` in fp16 with a card (and the eval's unit plot,
    ``units.png``, when given); register its sha256."""
    doc = read_model_config(model_folder)
    if doc["kind"] != "semantic":
        raise TokenlmError(f"{model_folder}: kind {doc['kind']!r}, expected 'semantic'")
    meta = {
        **doc.get("meta", {}),
        "eval": {
            k: report[k] for k in ("pnmi", "pnmi_mfcc_kmeans", "phone_purity", "cluster_purity", "speaker_invariance")
        },
    }
    experiments = card_section(WEIGHTS_DIR / name, "Experiments")  # written by hand: kept across bundles
    with tempfile.TemporaryDirectory() as tmp:
        card = Path(tmp) / "README.md"
        text = model_card(name, doc, report, train_info)
        extra = {"README.md": card}
        if plot is not None:
            extra["units.png"] = Path(plot)
            text += "\n![units over a held-out clip, phone boundaries as lines](units.png)\n"
        card.write_text(text + ("\n" + experiments if experiments else ""))
        dest = save_model(
            WEIGHTS_DIR / name,
            "semantic",
            doc["config"],
            load_weights(model_folder),
            meta=meta,
            extra_files=extra,
            dtype=torch.float16,
        )
    size = sum(f.stat().st_size for f in dest.iterdir())
    if size > MAX_BYTES:
        raise TokenlmError(f"{dest}: {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB budget")
    register(name, "semantic")
    return dest


if __name__ == "__main__":
    folder, report_path = sys.argv[1], sys.argv[2]
    info, plot = (sys.argv[3:] + ["", None])[:2]
    print(bundle(folder, json.loads(Path(report_path).read_text()), info, plot=plot))
