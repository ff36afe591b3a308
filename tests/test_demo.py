"""The demo: every endpoint through gradio_client, the page in a real browser (Debian's Chromium), the
messages a user sees for bad input or a missing model, and the CLI's bad input.

One server serves the module: the codec-16k bundled model plus a tiny LM trained 4 steps on random codes
(test_tasks' corpus), so the tasks run end to end but say nothing sensible.
"""

from __future__ import annotations

import io
import re
import socket
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_tasks import make_corpus, tiny_cfg
from tokenlm.apps import demo as D
from tokenlm.tasks.pipeline import Pipeline

from tokenlm.errors import TokenlmError

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TABS = ["Speech recognition", "Text to speech", "Voice cloning", "Separation", "Captioning", "Music continuation"]
TABS += ["Compression"]
NOT_BUILT = {"separate": "Separation", "caption": "Captioning", "continue_": "Music continuation"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    from tokenlm.train import train

    corpus = make_corpus(tmp_path_factory.mktemp("demo-corpus"))
    out = tmp_path_factory.mktemp("demo-lm")
    train(replace(tiny_cfg(corpus), max_steps=4), out, fresh=True)
    return out / "model"


@pytest.fixture(scope="module")
def models(lm_folder):
    return D.load_models(str(lm_folder))


@pytest.fixture(scope="module")
def url(models):
    app = D.build_app(models)
    port = free_port()
    D.launch(app, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def client(url):
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Bad uploads: silence, a clip over the limit, a prompt too short for cloning, a file that is not audio."""
    d = tmp_path_factory.mktemp("clips")
    noise = lambda s: (np.random.default_rng(0).standard_normal(int(s * 16000)) * 0.1).astype(np.float32)  # noqa: E731
    sf.write(d / "silence.wav", np.zeros(16000, np.float32), 16000)
    sf.write(d / "long.wav", noise(D.MAX_SECONDS + 1), 16000)
    sf.write(d / "short.wav", noise(1.0), 16000)
    speech, sr = sf.read(D.SPEECH, dtype="float32")
    sf.write(d / "voice.wav", speech[: int(3.2 * sr)], sr)  # a prompt that leaves the tiny LM's context room
    (d / "text.wav").write_text("this is not audio")
    return d


def test_every_endpoint_by_api_name(client, models, clips):
    summary, original, decoded, tlm, image = client.predict(handle_file(D.SPEECH), "3", api_name="/compress")
    data = Path(tlm).read_bytes()
    assert f"{len(data):,} bytes" in summary and "kbps" in summary and Path(image).is_file()
    seconds = sf.info(D.SPEECH).duration
    assert sf.info(decoded).duration == pytest.approx(seconds, abs=0.01) and Path(original).is_file()
    assert len(data) * 8 / seconds / 1000 == pytest.approx(3.0, rel=0.1)  # header included

    text, language = client.predict(handle_file(D.SPEECH), api_name="/asr")
    assert text and language in models.pipe.lm.vocab.languages

    for api, args in [
        ("/tts", ("the cat", "en", 1)),
        ("/clone", (handle_file(clips / "voice.wav"), "a cat", "the cat", "en", 1)),
    ]:
        _, whole = client.predict(*args, api_name=api)  # (the live stream, the whole speech when done)
        assert sf.info(whole).samplerate == 16000 and sf.info(whole).frames > 0

    calls = {
        "separate": ("/separate", (handle_file(D.MIXTURE), "speech")),
        "caption": ("/caption", (handle_file(D.TUNE),)),
        "continue_": ("/continue", (handle_file(D.TUNE), 1, 0)),
    }
    for method, (api, args) in calls.items():
        if hasattr(Pipeline, method):  # built: the tab runs the model
            out = client.predict(*args, api_name=api)
            assert all(o for o in (out if isinstance(out, tuple) else (out,)))
        else:
            with pytest.raises(AppError, match=f"{NOT_BUILT[method]} is not available in this model yet"):
                client.predict(*args, api_name=api)


def test_bad_input_is_one_readable_line(client, clips):
    cases = [
        ("/compress", (None, "1.5"), "upload or record a clip first"),
        ("/compress", (handle_file(clips / "silence.wav"), "1.5"), "the clip is silent"),
        ("/asr", (handle_file(clips / "long.wav"),), f"at most {D.MAX_SECONDS:g} s"),
        ("/asr", (handle_file(clips / "text.wav"),), r"^text\.wav: not a readable audio file$"),
        ("/clone", (handle_file(clips / "short.wav"), "", "the cat", "en", 0), "give at least 3 s"),
        ("/tts", ("   ", "en", 0), "type some text"),
    ]
    for api, args, message in cases:
        with pytest.raises(AppError, match=message) as err:
            client.predict(*args, api_name=api)
        assert "Traceback" not in str(err.value) and "\n" not in str(err.value)


def test_tts_streams_before_generation_ends(models, monkeypatch):
    monkeypatch.setattr(D, "STREAM_FRAMES", 1)  # one frame per piece, so even the tiny model's speech is several
    demo = D.Demo(models)  # kept: its output files live as long as it does
    steps = list(demo.tts("the cat sat", "en", 1, progress=None))
    live = [sf.read(io.BytesIO(s[0]), dtype="int16") for s in steps[:-1]]  # WAV pieces to play as they come
    whole, rate = sf.read(steps[-1][1], dtype="int16")  # then the whole speech, as a file
    assert len(live) >= 2 and all(r == rate == 16000 for _, r in live)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in live]), whole)


def test_without_the_lm_compression_still_works(models, monkeypatch):
    monkeypatch.setattr(D.Pipeline, "from_pretrained", lambda *a: (_ for _ in ()).throw(TokenlmError("no such LM")))
    monkeypatch.setattr(D, "Compressor", lambda codec: models.compressor)  # the codec loaded once already
    bare = D.load_models("tokenlm-small")
    assert bare.pipe is None and bare.lm_error == "no such LM"
    demo = D.Demo(bare)
    with pytest.raises(TokenlmError, match=r"the model is not available \(no such LM\)"):
        demo.asr(D.SPEECH, progress=None)
    summary, *_ = demo.compress(D.SPEECH, "1.5", progress=None)
    assert "kbps" in summary
    page = D.build_app(bare).config["components"]
    notes = [c["props"].get("value") or "" for c in page if c["type"] == "markdown"]
    assert sum("The model is not available (no such LM)" in n for n in notes) == len(TABS) - 1


def test_tasks_missing_from_the_pipeline_say_not_yet(models):
    demo = D.Demo(replace(models, pipe=SimpleNamespace()))  # a pipeline with none of the three methods
    for call, title in [
        (lambda: demo.separate(D.MIXTURE, "speech", progress=None), "Separation"),
        (lambda: demo.caption(D.TUNE, progress=None), "Captioning"),
        (lambda: demo.continue_(D.TUNE, 2, 0, progress=None), "Music continuation"),
    ]:
        with pytest.raises(TokenlmError, match=f"^{title} is not available in this model yet$"):
            call()


def test_cli_bad_port_is_one_line_exit_2(capsys):
    from tokenlm.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert main(["demo", "--port", str(taken)]) == 2
    assert main(["demo", "--port", "70000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "choose another --port" in err[0] and "not a port number" in err[1]


def test_bench_load_counts_errors_and_latency(url):
    from tokenlm.bench.demo import load

    out = load(Client(url, verbose=False), "/compress", (handle_file(D.SPEECH), "1.5"), 3)
    assert out["errors"] == 0 and 0 < out["p50_s"] <= out["p95_s"] <= out["max_s"] <= out["wall_s"]
    bad = load(Client(url, verbose=False), "/compress", (None, "1.5"), 2)
    assert bad["errors"] == 2 and "upload or record" in bad["first_error"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_page_in_a_real_browser(url):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        hosts = set()
        page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
        page.goto(url, wait_until="networkidle")
        tabs = page.get_by_role("tab")
        assert [tabs.nth(i).inner_text() for i in range(tabs.count())] == TABS

        # Compression: upload, compress, the decoded audio and the size appear
        page.get_by_role("tab", name="Compression").click()
        page.get_by_test_id("waveform-audio to compress").locator("input[type=file]").set_input_files(D.SPEECH)
        page.get_by_role("button", name="Compress", exact=True).click()
        expect(page.locator("#compress-summary")).to_contain_text("bytes in the .tlm file", timeout=30_000)
        expect(page.locator("#compress-summary")).to_contain_text("kbps")
        decoded = page.locator("#compress-decoded a[download]")
        expect(decoded).to_have_attribute("href", re.compile(r"/gradio_api/file=.*\.wav$"))
        assert page.locator("#compress-decoded audio").count() >= 1

        # a bad upload shows a readable message in the page
        page.get_by_test_id("waveform-audio to compress").get_by_label("Clear").click()
        page.get_by_role("button", name="Compress", exact=True).click()
        expect(page.get_by_test_id("toast-text")).to_have_text("upload or record a clip first")

        # speech recognition end to end
        page.get_by_role("tab", name="Speech recognition").click()
        page.get_by_test_id("waveform-speech").locator("input[type=file]").set_input_files(D.SPEECH)
        page.get_by_role("button", name="Transcribe").click()
        expect(page.get_by_label("language")).not_to_have_value("", timeout=30_000)
        assert page.get_by_label("transcript").input_value()

        # text to speech plays as a stream (HLS segments), then offers the whole speech
        page.get_by_role("tab", name="Text to speech").click()
        page.get_by_label("text", exact=True).fill("the cat sat on the mat")
        with page.expect_response(lambda r: r.url.endswith(".aac") and r.ok, timeout=30_000):
            page.get_by_role("button", name="Speak", exact=True).click()
        expect(page.locator("#tts-whole a[download]")).to_have_attribute("href", re.compile(r"speech\.wav$"))
        browser.close()
    assert hosts == {url.split("/")[2]}  # offline: nothing but the demo's own address was asked for
