"""Bundle a trained codec run as ``tokenlm/weights/<name>`` (fp16 safetensors + config + model card).

    python -m tokenlm.codecs.codec.bundle ~/.cache/tokenlm/runs/codec-small --eval eval/codec_eval.json

The model card records the data, the training time and steps from the run, and the held-out table of
``tokenlm eval codec`` (run it on the fp16 model after bundling and pass ``--eval`` again to refresh it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from tokenlm.checkpoint import load_state, load_weights, read_model_config, save_model
from tokenlm.pretrained import WEIGHTS_DIR, card_section, register
from tokenlm.utils import atomic_write_text

from .evaluate import markdown


def head_text(cfg: dict) -> str:
    s = cfg.get("head_overlap", 1)
    if s == 1:
        return " (frames of 2 hops at 50% overlap)"
    return f" ({s} frames of 2 hops per codec frame, {100 - 50 // s}% overlap)"


def model_card(name: str, doc: dict, eval_results: dict | None, bench: dict | None, train: dict | None = None) -> str:
    """The model card; ``train`` is the run's training config (from its state file) when there is one."""
    meta, cfg = doc.get("meta", {}), doc["config"]
    lines = [
        f"# {name}: tokenlm's 16 kHz neural audio codec",
        "",
        f"Causal STFT-frame ConvNeXt encoder ({cfg['encoder_layers']} blocks, width {cfg['dim']}) -> residual VQ "
        f"({cfg['n_q']} codebooks of {cfg['codebook_size']}, EMA, k-means init, dead-code restart below "
        f"{cfg.get('dead_threshold', 1.0):g} uses per step, quantizer dropout) "
        f"-> ConvNeXt decoder ({cfg['decoder_layers']} blocks) with an iSTFT head{head_text(cfg)}. "
        f"{cfg['sample_rate']} Hz mono, "
        f"{cfg['sample_rate'] // cfg['hop']} frames/s; the first 3 / 6 / 12 codebooks give 1.5 / 3 / 6 kbps. Weights "
        "stored in fp16 (computed in fp32).",
        "",
        "## Training",
        "",
        f"- steps: {meta.get('steps')} (batch 16 x 1 s), audio seen: {meta.get('audio_hours_seen')} h, "
        f"wall time: {meta.get('train_hours')} h on 1 thread of a shared 2-core CPU (no GPU).",
        "- data (train split of `tokenlm data build --recipe small`): real speech (Fish Fillets NG nl/cs, Tux Paint "
        "descriptions in 13 languages, KLettres; GPL-2), game music (Wesnoth, SuperTux, SuperTuxKart, Frozen Bubble) "
        "and music21 scores rendered with fluidsynth, sound events; weights speech 0.5 / synthetic speech 0.15 "
        "(espeak-ng, festival, flite, piper; joined "
        "the run at step 4,127 when its manifest appeared) / music 0.25 / sounds 0.1.",
        "- losses: multi-resolution log+linear mel L1 and power-law compressed complex STFT MSE through EnCodec's "
        "loss balancer, commitment loss.",
    ]
    if (train or {}).get("warm_start_step"):
        lines.append(
            f"- continued from the committed model of step {train['warm_start_step']:,} (its optimiser state was "
            "not kept: fresh AdamW moments and a new warm-up; step count, hours and schedule carried on)."
        )
    lines += [f"- {h}" for h in (train or {}).get("history", [])]
    optim = (train or {}).get("optim", {})
    if optim.get("decay_start_step", 10**9) < (meta.get("steps") or 0):
        end = optim["decay_start_step"] + optim.get("decay_steps", 0)
        lines.append(
            f"- learning rate {optim.get('lr'):g} (AdamW) after a linear warm-up, constant until step "
            f"{optim['decay_start_step']:,}, then a cosine decay to {optim.get('min_lr_ratio', 0.1):g} of it by "
            f"step {end:,}."
        )
    gan = (train or {}).get("gan_start_step", 10**9)
    if gan < (meta.get("steps") or 0):
        frozen = train.get("gan_freeze_tokens", False)
        lines.append(
            f"- adversarial phase from step {gan:,}: multi-period + multi-scale STFT discriminators (hinge loss, "
            f"feature matching), {train.get('disc_warmup_steps', 0)} steps of discriminator warm-up, then the "
            f"adversarial weights ramp in over {train.get('adv_ramp_steps', 0)} steps"
            + (
                "; only the decoder learns in this phase (encoder and codebooks frozen), so the codes are exactly "
                "those of the model at that step."
                if frozen
                else "."
            )
        )
    else:
        lines.append(
            "- no adversarial losses: tried from a trained model on one CPU core, the discriminators stayed near "
            "chance and made held-out quality worse (see Experiments)."
        )
    lines += [
        "",
        "## Held-out results",
        "",
    ]
    if eval_results:
        lines += [
            f"`tokenlm eval codec` on {eval_results.get('speech_clips')} speech clips of speakers never trained on "
            f"and {eval_results.get('music_clips')} music clips of held-out tracks (6 s each, 16 kHz, -23 LUFS), "
            "beside Opus (ffmpeg libopus) and Codec2 in the same run:",
            "",
            markdown(eval_results),
            "",
        ]
        if any(k.startswith("tokenlm-int8@") for k in eval_results.get("systems", {})):
            lines += [
                "`tokenlm-int8` rows: the same weights exported to ONNX with int8 ConvNeXt MLPs "
                "(`python -m tokenlm.codecs.codec.export codec-16k -o DIR --int8`), run by onnxruntime "
                "(`tokenlm.codecs.codec.export.OnnxCodec`): the fast path on CPUs without native bf16.",
                "",
            ]
        lines += [
            "![rate-quality](rate_quality.png) ![training curves](curves.png) ![spectrograms](spectrograms.png)",
            "",
        ]
    else:
        lines += ["Not evaluated yet.", ""]
    if bench:
        lines += ["## Speed (`tokenlm bench codec`)", "", "```", json.dumps(bench, indent=1), "```", ""]
    lines += [
        "## Limits",
        "",
        "Trained for a short CPU budget: it is far from the quality of Opus at the same rate on speech.",
        "",
    ]
    return "\n".join(lines)


def bundle(
    run: Path,
    name: str = "codec-16k",
    eval_json: Path | None = None,
    bench_json: Path | None = None,
    history: list[str] | None = None,
) -> Path:
    """Copy the run's model to ``tokenlm/weights/<name>`` in fp16 and write its card. ``history``: lines on
    earlier phases of the run (kept in ``training.json``, so a later refresh of the card keeps them)."""
    src = run / "model" if (run / "model").exists() else run
    dest = WEIGHTS_DIR / name
    if src.resolve() != dest.resolve():
        doc = read_model_config(src)
        save_model(dest, "codec", doc["config"], load_weights(src), meta=doc.get("meta", {}), dtype=torch.float16)
    doc = read_model_config(dest)
    # the pictures the card shows: training curves and spectrograms from the run, the rate-quality plot of the eval
    pictures = [run / "curves.png", run / "spectrograms.png"]
    if eval_json:
        pictures.append(Path(eval_json).parent / "rate_quality.png")
    for pic in pictures:
        if pic.is_file() and pic.resolve() != (dest / pic.name).resolve():
            shutil.copyfile(pic, dest / pic.name)
    ev = json.loads(Path(eval_json).read_text()) if eval_json else None
    be = json.loads(Path(bench_json).read_text()) if bench_json else None
    train = None
    if (run / "state.safetensors").exists():
        state = load_state(run / "state.safetensors")
        train = json.loads(state["config"])
        if int(state.get("warm_step", 0)):
            train["warm_start_step"] = int(state["warm_step"])
    elif (dest / "training.json").exists():
        train = json.loads((dest / "training.json").read_text())
    if history:
        train = train or {}
        train["history"] = list(train.get("history", [])) + list(history)
    if train is not None:
        atomic_write_text(dest / "training.json", json.dumps(train, indent=1) + "\n")
    experiments = card_section(dest, "Experiments")  # written by hand: kept when the card is refreshed
    card = model_card(name, doc, ev, be, train)
    atomic_write_text(dest / "README.md", card + ("\n" + experiments if experiments else ""))
    register(name, "codec")
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="bundle a codec run as a tokenlm model")
    p.add_argument("run", help="run folder (with model/) or model folder; the bundled folder itself refreshes the card")
    p.add_argument("--name", default="codec-16k")
    p.add_argument("--eval", default=None, help="codec_eval.json from `tokenlm eval codec`")
    p.add_argument("--bench", default=None, help="JSON from `tokenlm bench codec --out`")
    p.add_argument("--history", action="append", default=[], help="a line on an earlier phase of the run (repeatable)")
    args = p.parse_args(argv)
    print(bundle(Path(args.run).expanduser(), args.name, args.eval, args.bench, args.history))
    return 0


if __name__ == "__main__":
    sys.exit(main())
