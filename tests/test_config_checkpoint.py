import dataclasses
from dataclasses import dataclass, field

import pytest
import torch

from tokenlm.checkpoint import load_state, load_weights, read_model_config, save_model, save_state
from tokenlm.config import load_config, to_dict
from tokenlm.errors import TokenlmError


@dataclass(frozen=True)
class Inner:
    width: int = 8
    rates: tuple[float, ...] = (1.5, 3.0)


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    lr: float = 1e-3
    inner: Inner = field(default_factory=Inner)


def test_yaml_include_and_override(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nlr: 1\ninner: {width: 16, rates: [1.5]}\n")
    (tmp_path / "child.yaml").write_text("include: base.yaml\nname: child\ninner: {width: 32}\n")
    cfg = load_config(Outer, tmp_path / "child.yaml", lr=0.5)
    assert cfg == Outer(name="child", lr=0.5, inner=Inner(width=32, rates=(1.5,)))
    assert isinstance(cfg.lr, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 2.0  # frozen


def test_nested_include_and_unknown_keys_are_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    (tmp_path / "c.yaml").write_text("include: b.yaml\n")
    with pytest.raises(TokenlmError, match="do not nest"):
        load_config(Outer, tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("nmae: typo\n")
    with pytest.raises(TokenlmError, match="unknown config keys"):
        load_config(Outer, tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("inner: {width: wide}\n")
    with pytest.raises(TokenlmError, match="expected int"):
        load_config(Outer, tmp_path / "e.yaml")


def test_model_folder_round_trip(tmp_path):
    model = torch.nn.Linear(4, 3)
    folder = save_model(
        tmp_path / "m", "toy", to_dict(Outer()), model.state_dict(), meta={"steps": 3}, dtype=torch.float16
    )
    doc = read_model_config(folder)
    assert doc["kind"] == "toy" and doc["meta"] == {"steps": 3} and doc["config"]["inner"]["width"] == 8
    sd = load_weights(folder)
    assert torch.allclose(sd["weight"], model.weight.detach(), atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary leftovers


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(TokenlmError, match="not a tokenlm model folder"):
        read_model_config(tmp_path)
    folder = save_model(tmp_path / "m", "toy", {}, {"w": torch.ones(2)})
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(TokenlmError, match="unreadable weights"):
        load_weights(folder)


def test_training_state_round_trip(tmp_path):
    opt_model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(opt_model.parameters())
    opt_model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"step": 7, "opt": opt.state_dict(), "pos": (1, 2), "name": None, "rng": torch.get_rng_state()}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back["step"] == 7 and back["pos"] == (1, 2) and back["name"] is None
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(back["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_pretrained_errors():
    from tokenlm import pretrained

    with pytest.raises(TokenlmError, match="no bundled model or folder"):
        pretrained.load("no-such-model")


def test_stop_request_defers_the_first_signal_and_aborts_on_the_second():
    import os
    import signal

    from tokenlm.utils import StopRequest

    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested  # the first signal only asks to stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_auto_precision_is_bf16_only_where_it_is_native(monkeypatch):
    from tokenlm import utils

    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(utils, "cpu_has_fast_bf16", lambda native=native: native)
        assert utils.resolve_precision("auto", "cpu") == want
        assert utils.resolve_precision("bf16", "cpu") == "bf16" and utils.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        utils.resolve_precision("fp16", "cpu")


def test_cpu_description_names_the_vector_extension():
    from tokenlm.utils import cpu_description

    epyc = "model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    xeon = "model name\t: Intel Xeon\nflags\t\t: avx avx2 avx512f avx512_bf16 amx_bf16\n"
    assert cpu_description(epyc) == "AMD EPYC (AVX2, no native bf16)"
    assert cpu_description(xeon) == "Intel Xeon (AVX-512, native bf16)"
