"""Corpus: manifest round trip, transcript parsers, splits and a build of real speech on a fixture root."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tokenlm.corpus import build, fetch, realspeech, splits
from tokenlm.corpus.manifest import Clip, load_clips, manifest_path, read_manifest, write_manifest
from tokenlm.errors import TokenlmError


def tone_file(path: Path, seconds: float = 0.5, sr: int = 22050, freq: float = 220.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    fmt = {".ogg": ("OGG", "VORBIS"), ".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16")}[path.suffix]
    sf.write(str(path), 0.3 * np.sin(2 * np.pi * freq * t), sr, format=fmt[0], subtype=fmt[1])
    return path


def test_manifest_round_trip_and_filters(tmp_path):
    clips = [
        Clip(
            "a",
            "/x/a.wav",
            1.5,
            16000,
            "speech_real",
            language="nl",
            speaker="s1",
            text="hoi",
            labels=("x",),
            split="eval",
            phones="/x/a.phones",
            extra={"custom": 3},
        ),
        Clip("b", "/x/b.wav", 2.0, 16000, "music", group="t1"),
    ]
    write_manifest(manifest_path(tmp_path, "speech_real"), clips[:1])
    write_manifest(manifest_path(tmp_path, "music"), clips[1:])
    back = read_manifest(manifest_path(tmp_path, "speech_real"))
    assert back == clips[:1] and back[0].extra == {"custom": 3} and back[0].labels == ("x",)
    assert [c.id for c in load_clips(tmp_path, kinds="music")] == ["b"]
    assert [c.id for c in load_clips(tmp_path, split="eval")] == ["a"]
    line = json.loads(manifest_path(tmp_path, "music").read_text().splitlines()[0])
    for key in (
        "id",
        "path",
        "duration",
        "sample_rate",
        "kind",
        "language",
        "speaker",
        "text",
        "text_en",
        "labels",
        "split",
        "phones",
    ):
        assert key in line
    with pytest.raises(TokenlmError):
        Clip("c", "/x", 1.0, 16000, "noise")
    with pytest.raises(TokenlmError, match="no manifest"):
        load_clips(tmp_path / "empty")


def test_fillets_lua_parser():
    lua = (
        'dialogId("vit-m-a", "font_small", "He said \\"no\\".")\ndialogStr("Hij zei \\"nee\\".")\n\n'
        'dialogId("vit-v-b", "font_big", "Only English.")\n\n'
        'dialogId("vit-hs-c", "font_statue", "Welcome.")\ndialogStr("Vítejte.")\n'
    )
    d = realspeech.parse_fillets_dialogs(lua)
    assert d["vit-m-a"] == {"font": "font_small", "text_en": 'He said "no".', "text": 'Hij zei "nee".'}
    assert d["vit-v-b"]["text"] is None and d["vit-hs-c"]["text"] == "Vítejte."
    assert realspeech.fillets_speaker("nl", "font_small") == "fillets-nl-m"
    assert realspeech.fillets_speaker("cs", "font_statue") == "fillets-cs-statue"


def test_tuxpaint_txt_parser():
    txt = "A frog.\nfr.utf8=Une grenouille.\npt_BR.utf8=Um sapo.\n\nnl.utf8= Een kikker. \n"
    assert realspeech.parse_tuxpaint_txt(txt) == {
        "en": "A frog.",
        "fr": "Une grenouille.",
        "pt_BR": "Um sapo.",
        "nl": "Een kikker.",
    }


def make_fixture_root(root: Path) -> Path:
    """A data root whose 'extracted packages' are tiny fakes (with .done markers, so nothing is fetched)."""
    pk = root / "pkgs"
    share = "usr/share/games/fillets-ng"
    for lang in ("nl", "cs"):
        lua = pk / "fillets-ng-data" / share / "script" / "city" / f"dialogs_{lang}.lua"
        lua.parent.mkdir(parents=True, exist_ok=True)
        lua.write_text(
            f'dialogId("c-m-1", "font_small", "One.")\ndialogStr("{lang} een")\n'
            f'dialogId("c-v-2", "font_big", "Two.")\ndialogStr("{lang} twee")\n'
            f'dialogId("c-x-3", "font_big", "Untranslated.")\n',
            encoding="utf-8",
        )
        for uid in ("c-m-1", "c-v-2", "c-x-3"):
            tone_file(pk / f"fillets-ng-data-{lang}" / share / "sound" / "city" / lang / f"{uid}.ogg")
    stamps = pk / "tuxpaint-stamps-default" / "usr/share/tuxpaint/stamps/animals"
    stamps.mkdir(parents=True)
    (stamps / "frog.txt").write_text("A frog.\nfr.utf8=Une grenouille.\nda.utf8=En frø.\n", encoding="utf-8")
    for name in ("frog_desc.ogg", "frog_desc_fr.ogg", "frog_desc_da.ogg"):
        tone_file(stamps / name, sr=44100)
    kl = pk / "klettres-data" / "usr/share/klettres"
    tone_file(kl / "cs/alpha/a.ogg")
    (kl / "cs").mkdir(parents=True, exist_ok=True)
    (kl / "cs/sounds.xml").write_text(
        '<!-- c -->\n<klettres><language code="cs"><alphabet>'
        '<sound name="A" file="cs/alpha/a.ogg" /><sound name="A" file="cs/alpha/a.ogg" />'
        '<sound name="B" file="cs/alpha/missing.ogg" /></alphabet></language></klettres>',
        encoding="utf-8",
    )
    for d in pk.iterdir():
        (d / ".done").write_text("ok\n")
    return root


def test_build_speech_real_on_fixture_splits_by_speaker(tmp_path, capsys):
    root = make_fixture_root(tmp_path / "data")
    recipe = build.Recipe(eval_speakers=("fillets-nl-m", "tuxpaint-da"))
    report = build.build(recipe, root, ["speech_real"])
    assert not report.failed
    clips = read_manifest(manifest_path(root, "speech_real"))
    by_id = {c.id: c for c in clips}
    assert len(clips) == 4 + 3 + 1  # untranslated line and missing/duplicate klettres entries skipped
    nl = by_id["fillets-nl/city/c-m-1"]
    assert (nl.speaker, nl.text, nl.text_en, nl.split, nl.language) == (
        "fillets-nl-m",
        "nl een",
        "One.",
        "eval",
        "nl",
    )
    assert (
        by_id["tuxpaint/animals/frog_desc"].text == "A frog." and by_id["tuxpaint/animals/frog_desc"].language == "en"
    )
    assert by_id["tuxpaint/animals/frog_desc_da"].split == "eval"
    assert by_id["klettres/cs/alpha/a"].text == "A" and by_id["klettres/cs/alpha/a"].speaker == "klettres-cs"
    train = {c.speaker for c in clips if c.split == "train"}
    held = {c.speaker for c in clips if c.split == "eval"}
    assert held == {"fillets-nl-m", "tuxpaint-da"} and not (train & held)
    assert all(Path(c.path).is_absolute() and c.duration == pytest.approx(0.5, abs=0.01) for c in clips)
    # a second build with the same recipe is a no-op; the stats command reports zero overlap
    assert "up to date" in (build.build(recipe, root, ["speech_real"]) and capsys.readouterr().out)
    from argparse import Namespace

    from tokenlm.corpus.stats import cli_stats

    assert cli_stats(Namespace(root=str(root), json=True, plot=str(tmp_path / "d.png"))) == 0
    stats = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert stats["speaker_overlap_train_eval"] == 0 and stats["speakers"] == {"train": 6, "eval": 2}
    assert (tmp_path / "d.png").stat().st_size > 1000


def test_eval_speaker_typo_is_refused(tmp_path):
    root = make_fixture_root(tmp_path / "data")
    with pytest.raises(TokenlmError, match="do not exist"):
        build.build(build.Recipe(eval_speakers=("fillets-nl-q",)), root, ["speech_real"])


def test_split_by_group_and_overlap():
    clips = [
        Clip(f"m{t}-{i}", "/x", 20.0, 44100, "music", source=f"src{t % 2}", group=f"track{t}")
        for t in range(10)
        for i in range(3)
    ]
    out = splits.split_by_group(clips, 0.2, seed=1)
    assert splits.group_overlap(out) == []
    held = {c.group for c in out if c.split == "eval"}
    assert len(held) == 2 and {int(g[5:]) % 2 for g in held} == {0, 1}  # one track from each source
    assert splits.split_by_group(clips, 0.2, seed=1) == out  # reproducible
    leaky = [
        Clip("a", "/x", 1, 1, "speech_real", speaker="s"),
        Clip("b", "/x", 1, 1, "speech_real", speaker="s", split="eval"),
    ]
    assert splits.speaker_overlap(leaky) == ["s"]


def test_fetch_reports_what_it_could_not_get(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "_run", lambda cmd, cwd=None: "E: Unable to locate package nosuchpkg")
    report = fetch.FetchReport()
    assert fetch.fetch_deb("nosuchpkg", tmp_path, report) is None
    assert "Unable to locate package" in report.failed["nosuchpkg"]


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from tokenlm.cli import main

    assert main(["data", "stats", "--root", str(tmp_path)]) == 2
    assert "no manifests" in capsys.readouterr().err
    assert main(["data", "build", "--root", str(tmp_path), "--only", "speech_real,bogus"]) == 2
    assert "unknown part" in capsys.readouterr().err
    assert main(["data", "build", "--root", str(tmp_path), "--recipe", "nosuchrecipe"]) == 2
    assert not (tmp_path / "manifests").exists()  # nothing written on bad input


def test_english_texts_for_synthesis(tmp_path):
    from tokenlm.corpus import texts

    pk = make_fixture_root(tmp_path / "data") / "pkgs"
    script = pk / "fillets-ng-data/usr/share/games/fillets-ng/script"
    assert texts.fillets_english(script) == ["One.", "Two.", "Untranslated."]
    assert texts.tuxpaint_english(pk / "tuxpaint-stamps-default/usr/share/tuxpaint/stamps") == ["A frog."]
