"""Music rendered from the music21 score corpus with fluidsynth and a General MIDI soundfont.

Scores are drawn reproducibly (seeded) across composers; each gets a General MIDI ensemble chosen
by the same seed (piano, strings, choir, organ, winds, brass, guitar) so timbres vary. The render is mono,
loudness-normalised to -20 LUFS (fluidsynth output is quiet) and then cut like the game music
(``corpus.music``). Renders are kept in ``<out>/renders/<id>.wav``; existing ones are reused.
"""

from __future__ import annotations

import logging
import random
import re
import subprocess
import tempfile
from pathlib import Path

from tokenlm.codecs.audio import load_audio, normalize_loudness, save_audio

log = logging.getLogger("tokenlm.corpus")

ENSEMBLES = {  # General MIDI programs (0-based), cycled over the parts of a score
    "piano": [0],
    "strings": [40, 40, 41, 42],
    "choir": [52],
    "organ": [19],
    "winds": [73, 68, 71, 70],
    "brass": [56, 60, 57, 58],
    "guitar": [24, 25],
    "harpsichord": [6],
}
COMPOSERS = (
    "bach",
    "palestrina",
    "monteverdi",
    "trecento",
    "beethoven",
    "mozart",
    "haydn",
    "essenFolksong",
    "oneills1850",
    "ryansMammoth",
    "josquin",
    "schumann_robert",
    "airdsAirs",
    "corelli",
    "handel",
)


def pick_scores(n: int, seed: int = 0) -> list[Path]:
    """``n`` corpus score paths, spread over ``COMPOSERS`` (round robin), reproducible from ``seed``."""
    from music21 import corpus

    rng = random.Random(seed)
    pools = []
    for c in COMPOSERS:
        paths = sorted(str(p) for p in corpus.getComposer(c) if "choraleAnalyses" not in str(p))
        rng.shuffle(paths)
        pools.append(paths)
    picked: list[Path] = []
    while len(picked) < n and any(pools):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(Path(pool.pop()))
    return picked


def score_id(path: Path) -> str:
    rel = str(path).split("/corpus/")[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", rel.rsplit(".", 1)[0])


def _write_midi(score_path: Path, midi_path: Path, ensemble: str) -> None:
    from music21 import converter, instrument

    score = converter.parse(str(score_path))
    if hasattr(score, "scores"):  # an Opus: take its first piece
        score = score.scores[0]
    programs = ENSEMBLES[ensemble]
    for i, part in enumerate(getattr(score, "parts", [score])):
        for inst in list(part.recurse().getElementsByClass(instrument.Instrument)):
            inst.activeSite.remove(inst)
        part.insert(0, instrument.instrumentFromMidiProgram(programs[i % len(programs)]))
    score.write("midi", fp=str(midi_path))


MAX_RENDER_BYTES = 32000 * 2 * 2 * 900  # 15 minutes of 32 kHz 16-bit stereo


def _cap_file_size() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_RENDER_BYTES, MAX_RENDER_BYTES))


def render_score(
    score_path: Path, out_dir: Path, soundfont: Path, sample_rate: int = 32000, seed: int = 0
) -> tuple[Path, str] | None:
    """Render one score -> (normalised mono wav, ensemble), or None when music21/fluidsynth fail on it."""
    sid = score_id(score_path)
    ensemble = random.Random(f"{seed}:{sid}").choice(sorted(ENSEMBLES))
    wav = out_dir / "renders" / f"{sid}.wav"
    if wav.is_file():
        return wav, ensemble
    wav.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wav.parent) as tmp:
        midi, raw = Path(tmp) / "x.mid", Path(tmp) / "x.wav"
        try:
            _write_midi(score_path, midi, ensemble)
        except Exception as e:  # music21 raises many kinds on odd scores; skip the score, say which
            log.warning("music21 could not convert %s: %s", sid, str(e)[:120])
            return None
        cmd = ["fluidsynth", "-ni", "-g", "0.6", "-F", str(raw), "-r", str(sample_rate), str(soundfont)]
        cmd.append(str(midi))
        try:  # a few MIDI files never end in fluidsynth: cap the output size and the time
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=_cap_file_size)
        except subprocess.TimeoutExpired:
            log.warning("fluidsynth timed out on %s", sid)
            return None
        if r.returncode != 0 or not raw.is_file():
            log.warning("fluidsynth failed on %s: %s", sid, r.stderr.strip()[-120:])
            return None
        audio = load_audio(raw, sample_rate)
        save_audio(wav, normalize_loudness(audio.samples, sample_rate, -20.0), sample_rate)
    return wav, ensemble


def score_tracks(out_dir: Path, soundfont: Path, minutes: float, seed: int = 0, sample_rate: int = 32000):
    """Render scores until ``minutes`` of music exist -> ``music.Track``s (source ``music21-<composer>``)."""
    import soundfile as sf

    from tokenlm.corpus.music import Track
    from tokenlm.utils import progress

    tracks, total = [], 0.0
    bar = progress(total=int(minutes), desc="music21 renders (min)")
    for path in pick_scores(10 * int(minutes) + 10, seed):
        if total >= minutes * 60:
            break
        done = render_score(path, out_dir, soundfont, sample_rate, seed)
        if done is None:
            continue
        wav, ensemble = done
        sid = score_id(path)
        tracks.append(Track(f"music21/{sid}", wav, f"music21-{sid.split('_')[0]}", (ensemble,)))
        seconds = sf.info(str(wav)).duration
        total += seconds
        bar.update(int(total / 60) - bar.n)
    bar.close()
    return tracks
