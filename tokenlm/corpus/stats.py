"""``tokenlm data stats``: hours per kind, speakers and languages per split, train/eval speaker overlap."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from tokenlm.corpus.manifest import PARTS, Clip, data_root, manifest_path, read_manifest
from tokenlm.corpus.splits import group_overlap, speaker_overlap
from tokenlm.errors import TokenlmError


def corpus_stats(clips: list[Clip]) -> dict:
    """Summary of ``clips`` as a JSON-ready dict (hours rounded to 0.01 h)."""
    hours: dict[str, dict[str, float]] = defaultdict(lambda: {"train": 0.0, "eval": 0.0})
    count: dict[str, int] = defaultdict(int)
    speakers: dict[str, set] = {"train": set(), "eval": set()}
    languages: dict[str, set] = {"train": set(), "eval": set()}
    for c in clips:
        hours[c.kind][c.split] += c.duration / 3600
        count[c.kind] += 1
        if c.speaker and c.kind.startswith("speech"):
            speakers[c.split].add(c.speaker)
        if c.language and c.kind.startswith("speech"):
            languages[c.split].add(c.language)
    return {
        "hours": {k: round(v["train"] + v["eval"], 2) for k, v in hours.items()},
        "hours_per_split": {k: {s: round(h, 2) for s, h in v.items()} for k, v in hours.items()},
        "clips": dict(count),
        "speakers": {s: len(v) for s, v in speakers.items()},
        "eval_speakers": sorted(speakers["eval"]),
        "languages": {s: sorted(v) for s, v in languages.items()},
        "speaker_overlap_train_eval": len(speaker_overlap(clips)),
        "group_overlap_train_eval": len(group_overlap(clips)),
    }


def plot_durations(clips: list[Clip], path: str | Path) -> Path:
    """Histogram of clip durations per kind (log-spaced bins) written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    by_kind: dict[str, list[float]] = defaultdict(list)
    for c in clips:
        by_kind[c.kind].append(max(c.duration, 0.05))
    bins = np.logspace(np.log10(0.05), np.log10(max(max(v) for v in by_kind.values()) + 1), 40)
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, durs in sorted(by_kind.items()):
        ax.hist(durs, bins=bins, histtype="step", linewidth=1.5, label=f"{kind} ({len(durs)})")
    ax.set(xscale="log", xlabel="clip duration (s)", ylabel="clips", title="tokenlm corpus: clip durations")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from tokenlm.utils import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return Path(path)


def _table(stats: dict) -> str:
    rows = [f"{'kind':18s} {'clips':>7s} {'hours':>7s} {'train h':>8s} {'eval h':>7s}"]
    for kind, h in stats["hours"].items():
        split = stats["hours_per_split"][kind]
        rows.append(f"{kind:18s} {stats['clips'][kind]:7d} {h:7.2f} {split['train']:8.2f} {split['eval']:7.2f}")
    rows.append(
        f"speakers: train {stats['speakers']['train']}, eval {stats['speakers']['eval']} "
        f"({', '.join(stats['eval_speakers'])})"
    )
    rows.append(f"languages: train {len(stats['languages']['train'])}, eval {' '.join(stats['languages']['eval'])}")
    rows.append(f"speaker_overlap_train_eval: {stats['speaker_overlap_train_eval']}")
    return "\n".join(rows)


def cli_stats(args) -> int:
    root = data_root(args.root)
    parts = [p for p in PARTS if manifest_path(root, p).is_file()]
    if not parts:
        raise TokenlmError(f"no manifests under {root / 'manifests'} (run `tokenlm data build`)")
    clips = [c for p in parts for c in read_manifest(manifest_path(root, p))]
    stats = {"root": str(root), "parts": parts, **corpus_stats(clips)}
    print(json.dumps(stats, indent=2, ensure_ascii=False) if args.json else _table(stats))
    if args.plot:
        print(f"wrote {plot_durations(clips, args.plot)}")
    return 0
