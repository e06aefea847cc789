"""The app in a real browser (headless Chromium through selenium) against the tiny checkpointed run.

The app runs as its own process on 127.0.0.1, as a user starts it. The page's generate and edit
must show the very pixels that sample.py writes for the same request, seed and settings, and a
non-image style crop must show sample.py's one-line error while the server keeps serving. The
screenshot is kept as a test artifact (UPGPT_TEST_ARTIFACTS, default ./test-artifacts).
"""
import io
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (BROWSER and DRIVER), reason="needs Debian's chromium and chromium-driver")
STEPS = ["--num_steps", "4"]
GENERATE = {"task": "generate", "text": "a person in a green top", "num": 1, "seed": 0, "name": "generate"}
SECOND_SEED = 1  # what a second browser asks for at the same time
EDIT = {"task": "edit", "example": 0, "edits": ["top=text:a red top"], "seed": 0, "name": "edit"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(checkpointed_run, tmp_path_factory):
    """(page URL, sample.py's outputs folder, sample.py's error line for a bad crop, the bad crop)."""
    from upgpt_jax.sampling.sources import DatasetExamples

    folder = tmp_path_factory.mktemp("app")
    poses = folder / "poses"
    poses.mkdir()
    from upgpt_jax import sampling

    run_config = sampling.run_config(checkpointed_run)[0]
    np.save(poses / "pose.npy", DatasetExamples(run_config).person(1).smpl)
    bad_crop = folder / "bad_crop.txt"
    bad_crop.write_text("not an image\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(folder / "jax_cache"))
    port = _free_port()
    log = open(folder / "app.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "upgpt_jax.app", "--workdir", str(checkpointed_run), "--port", str(port),
         "--pose_dir", str(poses), *STEPS], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        requests = folder / "requests.jsonl"
        generate = dict(GENERATE, smpl=str(poses / "pose.npy"))
        second = dict(generate, seed=SECOND_SEED, name="generate_second")
        requests.write_text("\n".join(json.dumps(request) for request in (generate, second, EDIT)) + "\n")
        sample = [sys.executable, "sample.py", "--workdir", str(checkpointed_run), *STEPS]
        done = subprocess.run([*sample, "--requests", str(requests), "--out", str(folder / "out")], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        bad = subprocess.run([*sample, "--task", "generate", "--text", "x", "--smpl", str(poses / "pose.npy"),
                              "--style", f"top={bad_crop}", "--out", str(folder / "bad")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2, bad.stderr[-3000:]
        url = f"http://127.0.0.1:{port}/"
        _wait_for(lambda: _responds(url), 300, "the app to serve its page", folder / "app.log")
        yield url, folder / "out", bad.stderr.strip().splitlines()[-1], bad_crop
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def _chromium():
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))


@pytest.fixture(scope="module")
def browsers():
    """Two headless Chromium windows: two users at once."""
    drivers = [_chromium(), _chromium()]
    yield drivers
    for driver in drivers:
        driver.quit()


def _responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _wait_for(condition, seconds: float, what: str, log: pathlib.Path | None = None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}" + (f"; log:\n{log.read_text()[-3000:]}" if log else ""))


def _text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def _type(driver, element_id: str, text: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, f"#{element_id} textarea, #{element_id} input")
    box.clear()
    box.send_keys(text)


def _run(driver, button: str, status: str) -> str:
    """Click `button` and wait for the tab's status line to change to done or error; returns it."""
    return _finish(driver, status, _click(driver, button, status))


def _click(driver, button: str, status: str) -> str:
    """Click `button`; returns the status line before."""
    before = _text(driver, status)
    driver.find_element(By.ID, button).click()
    return before


def _finish(driver, status: str, before: str) -> str:
    def finished(driver) -> str | None:
        line = _text(driver, status)
        return line if line != before and line.startswith(("Done", "error:")) else None

    return WebDriverWait(driver, 300, 0.5).until(finished)


def _shown_images(driver, gallery: str) -> list[np.ndarray]:
    sources = [image.get_attribute("src") for image in driver.find_elements(By.CSS_SELECTOR, f"#{gallery} img")]
    return [np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(source, timeout=30).read())).convert("RGB"))
            for source in dict.fromkeys(sources)]  # a gallery may show an item twice (thumbnail and preview)


def _written(out: pathlib.Path, name: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(path).convert("RGB")) for path in sorted((out / name).glob("sample_*.png"))]


def test_generate_and_edit_show_sample_py_pixels_and_a_bad_crop_its_error(served, browsers):
    url, out, cli_error, bad_crop = served
    browser, other = browsers
    for driver, seed in ((browser, GENERATE["seed"]), (other, SECOND_SEED)):
        driver.get(url)
        WebDriverWait(driver, 300, 0.5).until(lambda d: "Ready" in _text(d, "status"))
        _type(driver, "gen_text", GENERATE["text"])
        _type(driver, "seed", str(seed))

    # Two users click at once: the requests queue and each page shows its own (different) result.
    assert not np.array_equal(_written(out, "generate")[0], _written(out, "generate_second")[0])
    before = [_click(driver, "gen_run", "gen_status") for driver in browsers]
    for driver, line, name in zip(browsers, before, ("generate", "generate_second")):
        assert _finish(driver, "gen_status", line).startswith("Done"), _text(driver, "gen_status")
        shown = _shown_images(driver, "gen_samples")
        assert len(shown) == 1
        np.testing.assert_array_equal(shown[0], _written(out, name)[0])
    assert browser.find_elements(By.CSS_SELECTOR, "#gen_mask img"), "the person mask is shown"
    artifacts = pathlib.Path(os.environ.get("UPGPT_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(artifacts / "app_generate.png"))

    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Edit')]").click()
    _type(browser, "edit_text", "a red top")
    assert _run(browser, "edit_run", "edit_status").startswith("Done"), _text(browser, "edit_status")
    shown, written = _shown_images(browser, "edit_samples"), _written(out, "edit")
    assert len(shown) == len(written) == 2  # unedited beside edited
    for page_image, file_image in zip(shown, written):
        np.testing.assert_array_equal(page_image, file_image)
    browser.save_screenshot(str(artifacts / "app_edit.png"))

    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Generate')]").click()
    browser.find_element(By.CSS_SELECTOR, "#gen_styles button.label-wrap").click()
    upload = browser.find_element(By.CSS_SELECTOR, "#gen_crop_top input[type=file]")
    upload.send_keys(str(bad_crop))
    WebDriverWait(browser, 60, 0.5).until(lambda d: bad_crop.stem in _text(d, "gen_crop_top"))
    line = _run(browser, "gen_run", "gen_status")
    same_path = re.compile(r"\S*" + re.escape(bad_crop.name))
    assert same_path.sub("CROP", line) == same_path.sub("CROP", cli_error), (line, cli_error)
    browser.get(url)  # the server goes on serving
    WebDriverWait(browser, 60, 0.5).until(lambda d: "Ready" in _text(d, "status"))
