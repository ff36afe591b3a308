import subprocess
import sys

import numpy as np
import pytest

from tokenlm.cli import build_parser, main

SUBCOMMANDS = [
    ["compress"],
    ["decompress"],
    ["asr"],
    ["tts"],
    ["separate"],
    ["caption"],
    ["continue"],
    ["demo"],
    ["data", "build"],
    ["data", "stats"],
    ["tokenize"],
    ["train", "codec"],
    ["train", "semantic"],
    ["train", "lm"],
    ["eval", "codec"],
    ["eval", "semantic"],
    ["bench", "codec"],
    ["bench", "rvq"],
    ["bench", "attention"],
    ["bench", "lm"],
]


@pytest.mark.parametrize("cmd", SUBCOMMANDS, ids=" ".join)
def test_help_has_example(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and "tokenlm " + " ".join(cmd) in out


def test_every_design_command_exists():
    names = set(build_parser()._subparsers._group_actions[0].choices)
    assert names >= {
        "compress",
        "decompress",
        "asr",
        "tts",
        "separate",
        "caption",
        "continue",
        "demo",
        "data",
        "tokenize",
        "train",
        "eval",
        "bench",
    }


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tokenlm.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda p: p / "missing.wav", "no such file"),
        (lambda p: p, "is a directory"),
        (lambda p: (p / "e.wav").write_bytes(b"") or p / "e.wav", "empty"),
        (lambda p: (p / "t.wav").write_text("not audio at all" * 50) or p / "t.wav", "not a readable audio file"),
    ],
)
def test_bad_audio_input_exits_2_with_one_line(tmp_path, make, reason):
    bad = make(tmp_path)
    out = tmp_path / "out.tlm"
    r = run_cli("compress", str(bad), "-o", str(out))
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert not out.exists()


def test_nan_input_exits_2(tmp_path):
    import soundfile as sf

    x = np.zeros((1600, 1), np.float32)
    x[5] = np.inf
    sf.write(tmp_path / "inf.wav", x, 16000, subtype="FLOAT")
    r = run_cli("compress", str(tmp_path / "inf.wav"), "-o", str(tmp_path / "o.tlm"))
    assert r.returncode == 2 and "NaN or infinite" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.tlm").exists()


def test_usage_error_exits_2():
    r = run_cli("compress")
    assert r.returncode == 2
