"""ONNX export (--export onnx), and the book's latent explorers, which run the exported decoders in
the reader's browser.

Two tiny runs of the VAE (a 16-D latent space, so that the explorer has sliders) and the CVAE
(2-D) with --export onnx, into one folder as `make vae cvae` writes models/: on TensorFlow, and on
PyTorch in a process where TensorFlow cannot be imported (tests/backend_runs.py), the two
processes side by side, once for the module. Their ONNX copies must compute what Keras computes.
Then scripts/build_explorer.py exports the TensorFlow run's decoders for the book, the book is
built with them, and headless Chromium (as in tests/test_site.py) moves the explorers' point:
the digit drawn in the page must be what Keras's decoder makes of the z the page shows.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from conftest import run_main

VAE, CVAE = "VariationalAutoEncoder_tf2", "ConditionalVAE"
# Batches of 8: 32 steps in one epoch, enough for z and the label to change the digit drawn.
TINY = {VAE: ["--limit", "256", "--epochs", "1", "--batch-size", "8", "--iwae-samples", "1",
              "--no-mean-comparison", "--latent-dim", "16"],
        CVAE: ["--limit", "256", "--epochs", "1", "--batch-size", "8", "--classifier-epochs", "1",
               "--samples-per-class", "10", "--iwae-samples", "1"]}
EXPORTING = ["tensorflow", "torch"]  # the backends that export; JAX is refused
ORT_WEB = ROOT / "book" / "node_modules" / "onnxruntime-web" / "dist"
REQUIRED = os.environ.get("AUTOENCODERS_REQUIRE_SITE_TEST") == "1"  # CI: nothing may skip


def _skip_or_fail(reason):
    if REQUIRED:
        pytest.fail(f"AUTOENCODERS_REQUIRE_SITE_TEST=1, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module", autouse=True)
def _export_packages():
    missing = [m for m in ("onnx", "onnxruntime", "tf2onnx") if not _importable(m)]
    if missing:
        _skip_or_fail(f"{', '.join(missing)} missing: pip install -r requirements-export.txt")


def _importable(module):
    return importlib.util.find_spec(module) is not None


def _child_env(backend):
    inherited = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**inherited, "KERAS_BACKEND": backend, "AUTOENCODERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def runs(small_mnist_npz, tmp_path_factory):
    """{backend: the folder of both lessons' runs on it}, the two backends side by side, and
    beside them the refusal on JAX: {"jax": (the --out it was given, exit status, stderr)}."""
    started, folders = {}, {}
    for backend in EXPORTING:
        folder = tmp_path_factory.mktemp(f"export-{backend}")
        plan = [[name, ["--data", str(small_mnist_npz), "--out", str(folder / "out"),
                        *TINY[name], "--export", "onnx"], str(folder / name)]
                for name in (VAE, CVAE)]
        (folder / "plan.json").write_text(json.dumps(plan))
        without = ["--without-tensorflow"] if backend != "tensorflow" else []
        started[backend] = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "backend_runs.py"), *without,
             str(folder / "plan.json")], cwd=ROOT, env=_child_env(backend), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        folders[backend] = folder
    refused_out = tmp_path_factory.mktemp("export-jax") / "out"
    jax = subprocess.Popen([sys.executable, f"{VAE}.py", *TINY[VAE], "--export", "onnx",
                            "--out", str(refused_out)], cwd=ROOT, env=_child_env("jax"),
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    found = {}
    for backend, child in started.items():
        _, stderr = child.communicate(timeout=600)
        assert child.returncode == 0, stderr[-3000:]
        for name in (VAE, CVAE):
            logs = folders[backend] / name
            assert (logs / "status.txt").read_text() == "0", \
                (backend, name, (logs / "stderr.txt").read_text()[-3000:])
        found[backend] = folders[backend]
    _, stderr = jax.communicate(timeout=300)
    found["jax"] = (refused_out, jax.returncode, stderr)
    return found


# -- --export onnx --------------------------------------------------------------------------------

def _onnx_and_keras(path, inputs):
    """What the ONNX file at `path` and the .keras model beside it compute from `inputs`."""
    import keras
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    onnx = session.run(None, {spec.name: x for spec, x in zip(session.get_inputs(), inputs)})
    model = keras.models.load_model(path.with_suffix(".keras"), compile=False)
    computed = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    return onnx, [keras.ops.convert_to_numpy(x) for x in keras.tree.flatten(computed)]


@pytest.mark.parametrize("backend", EXPORTING)
def test_the_onnx_copies_compute_what_the_keras_models_compute(runs, lessons, backend):
    lessons[VAE], lessons[CVAE]  # imported: their layers are registered for loading
    models = runs[backend] / "out" / "models"
    rng = np.random.default_rng(1)
    z = rng.normal(size=(64, 16)).astype("float32")
    images = (rng.random((64, 28, 28, 1)) < 0.3).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, 64)]
    cases = {"vae_decoder": [z], "vae_encoder": [images], "cvae_decoder": [z[:, :2], labels],
             "cvae_encoder": [images, labels]}
    for name, inputs in cases.items():
        onnx, keras = _onnx_and_keras(models / f"{name}.onnx", inputs)
        assert len(onnx) == len(keras), name
        for got, want in zip(onnx, keras):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{name}, {backend}")
            print(f"{backend} {name}: max |ONNX - Keras| = {np.abs(got - want).max():.2g}")


@pytest.mark.parametrize("backend", EXPORTING)
def test_a_model_onnx_cannot_express_is_named_and_left_without_a_copy(runs, backend):
    """The VAE itself samples z: its ONNX copy would not compute what Keras computes, or the
    converter cannot write it. The run says so in one line, and writes the rest."""
    out = runs[backend] / "out"
    for name, models in ((VAE, ["vae_encoder", "vae_decoder"]),
                         (CVAE, ["cvae_encoder", "cvae_decoder", "digit_classifier"])):
        written = sorted(p.name for p in (out / "models").iterdir() if p.suffix == ".onnx")
        assert {f"{m}.onnx" for m in models} <= set(written), (backend, written)
        stderr = (runs[backend] / name / "stderr.txt").read_text().splitlines()
        sampled = "vae" if name == VAE else "cvae"
        notes = [line for line in stderr if line.startswith("note:")]
        assert len(notes) == 1 and notes[0].startswith(
            f"note: {sampled}.keras has no ONNX copy: "), notes
        assert not (out / "models" / f"{sampled}.onnx").exists()
        assert (out / "models" / f"{sampled}.keras").exists()
    assert not any(p.name.startswith(".") for p in (out / "models").iterdir())


def test_jax_refuses_to_export_in_one_line_before_anything_is_created(runs):
    out, returncode, stderr = runs["jax"]
    assert returncode == 2
    assert stderr.strip().splitlines() == [
        f"{VAE}.py: error: argument --export: KERAS_BACKEND=jax cannot export to ONNX here "
        "(Keras does it through jax2onnx, which needs Flax); train with tensorflow or torch, or "
        "load the saved .keras model on one of them and export there (see --help)"]
    assert not out.exists()


def test_export_without_its_packages_is_refused_before_anything_is_created(
        lessons, tmp_path, capsys, monkeypatch):
    from common import outputs

    monkeypatch.setitem(outputs.ONNX_EXPORTERS, "tensorflow", ("onnx", "no_such_exporter"))
    status, _, stderr = run_main(lessons[VAE].main, ["--export", "onnx", "--out", tmp_path / "out"],
                                 capsys)
    assert status == 2
    assert stderr == [f"{VAE}.py: error: argument --export: ONNX export needs no_such_exporter, "
                      "not installed: pip install -r requirements-export.txt (see --help)"]
    assert not (tmp_path / "out").exists()


def test_export_with_mixed_precision_is_refused_before_anything_is_created(
        lessons, small_mnist_npz, tmp_path, capsys):
    """Keras exports float32 models only: refused once the data are read, before any folder."""
    status, _, stderr = run_main(lessons[VAE].main, [
        "--data", small_mnist_npz, "--mixed-precision", "--export", "onnx", "--out",
        tmp_path / "out"], capsys)
    assert status == 2 and stderr[-1] == (
        f"{VAE}.py: error: --export onnx needs float32 models, and --mixed-precision computes in "
        "float16 or bfloat16: drop one of them")
    assert not (tmp_path / "out").exists()


def test_only_onnx_is_a_format(lessons, capsys):
    status, _, stderr = run_main(lessons[VAE].main, ["--export", "tflite"], capsys)
    assert status == 2 and stderr == [
        f"{VAE}.py: error: argument --export: the one format is onnx, got 'tflite' (see --help)"]


def test_export_is_no_setting(lessons):
    """--export adds files and changes nothing trained: a default run with it still writes the
    repository's models/, and resumes the same checkpoints."""
    import argparse

    from common import outputs

    assert lessons[VAE].parse_args(["--export", "onnx"]).out == ROOT
    plain = argparse.Namespace(epochs=3, beta=1.0, export=None)
    assert (outputs.settings_digest(plain)
            == outputs.settings_digest(argparse.Namespace(epochs=3, beta=1.0, export="onnx")))


def test_a_later_run_without_export_removes_the_earlier_copy(tmp_path):
    """An ONNX copy always belongs to the .keras model beside it: a model saved again without
    one takes an earlier run's copy away with it."""
    import argparse

    import keras

    from common import outputs

    def finish(export):
        run = outputs.open_folders(argparse.Namespace(out=tmp_path, export=export), "Lesson")
        inputs = keras.Input((3,), name="x")
        run.finish(tiny=keras.Model(inputs, keras.layers.Dense(2)(inputs)))

    finish("onnx")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny.keras", "tiny.onnx"]
    finish(None)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny.keras"]


# -- The book's latent explorers ------------------------------------------------------------------

def _browser_missing():
    from test_site import _missing

    reason = _missing()
    if reason is None and not (ORT_WEB / "ort.wasm.min.mjs").is_file():
        reason = "ONNX Runtime Web is not installed in book/node_modules (make site runs npm ci)"
    return reason


@pytest.fixture(scope="module")
def explorer_site(runs, tmp_path_factory):
    """The book, built with the explorers of the TensorFlow runs' models, and those models."""
    reason = _browser_missing()
    if reason:
        _skip_or_fail(reason)
    models = runs["tensorflow"] / "out" / "models"
    data = tmp_path_factory.mktemp("explorer-data")
    spec = importlib.util.spec_from_file_location("build_explorer",
                                                  ROOT / "scripts" / "build_explorer.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--models", str(models), "--out", str(data)])
    site = tmp_path_factory.mktemp("explorer-site")
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-E", "-W", "--keep-going", "-q",
         str(ROOT / "book"), str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "AUTOENCODERS_EXPLORER_DATA": str(data)})
    assert build.returncode == 0, f"sphinx-build failed:\n{build.stdout}\n{build.stderr}"
    return site, data, models


def test_the_explorer_data_hold_the_busiest_dimensions(explorer_site):
    import keras

    site, data, models = explorer_site
    vae, cvae = (json.loads((data / name / "explorer.json").read_text())
                 for name in ("vae", "cvae"))
    assert (vae["latent_dim"], vae["conditional"], cvae["latent_dim"], cvae["conditional"]) == \
        (16, False, 2, True)
    variance = np.array(vae["variance"])
    shown = vae["plane"] + vae["sliders"]
    assert len(set(shown)) == len(shown) == 8 and vae["plane"] == sorted(vae["plane"])
    assert min(variance[shown]) >= max(np.delete(variance, shown))  # the busiest 8
    assert list(variance[vae["sliders"]]) == sorted(variance[vae["sliders"]], reverse=True)
    assert (cvae["plane"], cvae["sliders"]) == ([0, 1], [])
    for info in (vae, cvae):
        points = np.array(info["points"])
        assert points.shape == (200, 2) and len(info["labels"]) == 200  # the test split
        low, high = np.array(info["low"])[info["plane"]], np.array(info["high"])[info["plane"]]
        assert (points >= low).all() and (points <= high).all()
    for name in ("vae", "cvae"):  # the site serves what the script wrote, and the runtime
        for file in ("decoder.onnx", "explorer.json"):
            assert (site / "_static" / "explorer" / name / file).read_bytes() == \
                (data / name / file).read_bytes()
    for file in ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"):
        assert (site / "_static" / "explorer" / "ort" / file).read_bytes() == \
            (ORT_WEB / file).read_bytes()
    assert keras.models.load_model(models / "vae_decoder.keras").inputs[0].name == vae["inputs"][0]


@pytest.fixture(scope="module")
def browser(explorer_site):
    """Headless Chromium, as tests/test_site.py starts it, on a server of the explorer site."""
    import functools
    import http.server
    import shutil
    import threading

    from test_site import _QuietHandler
    from test_site import start_chromium

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(explorer_site[0])))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    driver, profile = start_chromium()
    driver.server = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield driver
    driver.quit()
    httpd.shutdown()
    httpd.server_close()
    shutil.rmtree(profile, ignore_errors=True)


# Once the explorer has drawn more than `drawn` digits and is idle: the z it shows, and the
# digit's grey levels (the red channel of the canvas, which is grey).
_DRAWN = r"""
const [drawn, seconds, done] = arguments;
const deadline = Date.now() + seconds * 1000;
const poll = () => {
  const element = document.querySelector(".latent-explorer");
  if (element && element.dataset.busy === "false" && Number(element.dataset.drawn) > drawn) {
    const digit = element.querySelector("canvas.digit");
    const pixels = digit.getContext("2d").getImageData(0, 0, digit.width, digit.height).data;
    done({drawn: Number(element.dataset.drawn), z: element.querySelector("p.z").textContent,
          grey: Array.from(pixels).filter((value, i) => i % 4 === 0)});
  } else if (Date.now() > deadline) done(null);
  else setTimeout(poll, 20);
};
poll();
"""


class Explorer:
    """An explorer page in the browser, and what Keras's decoder makes of what it shows."""

    def __init__(self, browser, page, decoder):
        self.browser, self.decoder, self.drawn = browser, decoder, 0
        browser.get(f"{browser.server}/lessons/{page}")
        self.state = self.wait()
        self.plane = browser.find_element("css selector", ".latent-explorer canvas.plane")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", self.plane)

    def wait(self):
        """The z shown (float32, as decoded), its label, and the digit drawn, once drawn."""
        state = self.browser.execute_async_script(_DRAWN, self.drawn, 15)
        assert state is not None, "the explorer drew no new digit within 15 s"
        self.drawn = state["drawn"]
        text = state["z"]
        assert text.startswith("z = ("), text
        values, _, label = text[len("z = ("):].partition(")")
        z = np.array([float(v) for v in values.split(", ")], dtype="float32")
        grey = np.array(state["grey"], dtype=float).reshape(28, 28)
        label = int(label.split("digit ")[1]) if "digit" in label else None
        return z, label, grey

    def act(self, action):
        action(self.browser, self.plane)
        self.state = self.wait()
        return self.state

    def keras_digit(self):
        """Keras's decoder on the z (and label) shown: the probability of ink, times 255."""
        import keras

        z, label, _ = self.state
        inputs = [z[None]] if label is None else [z[None], np.eye(10, dtype="float32")[[label]]]
        logits = self.decoder(inputs if len(inputs) > 1 else inputs[0])
        return 255 * keras.ops.convert_to_numpy(keras.ops.sigmoid(logits))[0, :, :, 0]

    def assert_draws_what_keras_decodes(self):
        difference = np.abs(self.state[2] - self.keras_digit()).max()
        assert difference <= 1, f"the page's digit is {difference:.2f} grey levels off Keras's"


def _click(x, y):
    """A click at (x, y) CSS pixels from the plane's centre (as Selenium's offsets are)."""
    from selenium.webdriver import ActionChains

    return lambda browser, plane: ActionChains(browser).move_to_element_with_offset(
        plane, x, y).click().perform()


def _expected_plane_z(info, x, y):
    """Where on the plane's dimensions a click at (x, y) from its centre lands: 320 px wide."""
    across, up = info["plane"]
    fx, fy = (160 + x) / 320, (160 + y) / 320
    return (info["low"][across] + fx * (info["high"][across] - info["low"][across]),
            info["low"][up] + (1 - fy) * (info["high"][up] - info["low"][up]))


def test_the_vae_explorer_draws_what_keras_decodes_where_you_click_drag_and_slide(
        explorer_site, browser):
    import keras
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.keys import Keys

    site, data, models = explorer_site
    info = json.loads((data / "vae" / "explorer.json").read_text())
    page = Explorer(browser, "vae.html", keras.models.load_model(models / "vae_decoder.keras"))
    z, _, first = page.state
    np.testing.assert_array_equal(z, np.round(info["mean"], 2).astype("float32"))
    page.assert_draws_what_keras_decodes()
    across, up = info["plane"]
    seen = [first]
    for x, y in [(-110, -90), (100, 60), (20, 130)]:
        z, _, grey = page.act(_click(x, y))
        page.assert_draws_what_keras_decodes()
        np.testing.assert_allclose(z[[across, up]], _expected_plane_z(info, x, y), atol=0.06)
        others = np.delete(np.arange(16), [across, up])  # the rest stay at their average
        np.testing.assert_array_equal(z[others], np.round(info["mean"], 2)[others].astype("f4"))
        assert all(np.abs(grey - before).max() > 5 for before in seen), "the digit did not change"
        seen.append(grey)
    # A drag: the point follows the pointer while the button is down.
    z, _, grey = page.act(lambda browser, plane: ActionChains(browser).move_to_element_with_offset(
        plane, -60, 0).click_and_hold().move_by_offset(100, 40).release().perform())
    np.testing.assert_allclose(z[[across, up]], _expected_plane_z(info, 40, 40), atol=0.06)
    page.assert_draws_what_keras_decodes()
    # The arrow keys: a fiftieth of the plane's range.
    before = z.copy()
    z, _, _ = page.act(lambda browser, plane: plane.send_keys(Keys.ARROW_RIGHT))
    step = (info["high"][across] - info["low"][across]) / 50
    assert abs(z[across] - before[across] - step) <= 0.006 and z[up] == before[up]
    page.assert_draws_what_keras_decodes()
    # The sliders: the six busiest dimensions after the plane's two.
    sliders = browser.find_elements("css selector", ".latent-explorer input[type=range]")
    assert [int(s.get_attribute("data-dim")) for s in sliders] == info["sliders"]
    dim = info["sliders"][0]
    before = z.copy()
    z, _, grey = page.act(lambda browser, plane: browser.execute_script(
        "const s = arguments[0]; s.value = s.min; s.dispatchEvent(new Event('input'))",
        sliders[0]))
    assert abs(z[dim] - float(sliders[0].get_attribute("value"))) <= 0.0051 and z[dim] < before[dim]
    assert np.array_equal(np.delete(z, dim), np.delete(before, dim))
    page.assert_draws_what_keras_decodes()


def test_the_cvae_explorer_changes_the_digit_and_keeps_the_style(explorer_site, browser):
    import keras

    site, data, models = explorer_site
    page = Explorer(browser, "cvae.html", keras.models.load_model(models / "cvae_decoder.keras"))
    assert page.state[1] == 0  # the first digit
    page.assert_draws_what_keras_decodes()
    z, _, _ = page.act(_click(50, -40))
    page.assert_draws_what_keras_decodes()
    digits = {}
    for label in (7, 3):
        picked, chosen, grey = page.act(lambda browser, plane: browser.find_element(
            "css selector", f".latent-explorer input[type=radio][value='{label}']").click())
        assert chosen == label and np.array_equal(picked, z), "the label moved z"
        page.assert_draws_what_keras_decodes()
        digits[label] = grey
    assert np.abs(digits[7] - digits[3]).max() > 5, "another label drew the same digit"
    assert browser.find_elements("css selector", ".latent-explorer input[type=range]") == []


def _page_traffic(browser):
    """What the pages opened since the last call asked for, from Chromium's network log: {url:
    status or error}. The browser's own requests (its new-tab page, at start) are no page's."""
    sent, outcome = {}, {}
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            if params.get("documentURL", "").startswith(browser.server + "/"):
                sent[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.responseReceived":
            outcome[params["requestId"]] = params["response"]["status"]
        elif message["method"] == "Network.loadingFailed":
            outcome.setdefault(params["requestId"], params.get("errorText", "failed"))
    return {url: outcome.get(request) for request, url in sent.items()}


def test_the_explorers_ask_no_other_host_and_log_no_error(explorer_site, browser):
    from test_site import LOCAL_SCHEMES

    browser.get_log("browser")
    _page_traffic(browser)
    asked = {}
    for page in ("vae.html", "cvae.html"):
        Explorer(browser, page, decoder=None)
        asked.update(_page_traffic(browser))
    foreign = [url for url in asked
               if not url.startswith(browser.server + "/") and not url.startswith(LOCAL_SCHEMES)]
    assert not foreign, f"the explorers asked other hosts: {foreign}"
    failed = {url: status for url, status in asked.items()
              if not url.startswith(LOCAL_SCHEMES) and status not in (200, 304)}
    assert not failed, f"requests that failed: {failed}"
    served = {url.rsplit("/", 1)[1] for url in asked}
    assert {"ort.wasm.min.mjs", "ort-wasm-simd-threaded.wasm", "decoder.onnx"} <= served
    errors = [entry["message"] for entry in browser.get_log("browser")
              if entry["level"] == "SEVERE"]
    assert not errors, f"errors in the browser's console: {errors}"
