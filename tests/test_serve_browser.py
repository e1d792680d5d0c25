"""``restorekit serve`` in a real browser: headless Chromium driven by selenium through Debian's chromedriver.

The server runs on a free localhost port in this process; the browser uploads a generated face,
runs two methods and the test reads what the page shows (image sizes as decoded by the browser,
the metrics table, the download links), then the bad inputs and a cancelled PULSE. Skipped, with
the reason, only where no Chromium and chromedriver are installed (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="restorekit serve needs the web extra (starlette, uvicorn)")

from serve_helpers import (PrefixProxy, chromium_driver, find_chromium, generated_face, get_json,  # noqa: E402
                           request, resolve)

from restorekit.plugins import registry  # noqa: E402
from restorekit.web.config import ServeConfig  # noqa: E402
from restorekit.web.server import RunningServer, start  # noqa: E402

FOUND = find_chromium()
pytestmark = pytest.mark.skipif(isinstance(FOUND, str), reason=str(FOUND))

METRICS = ["psnr_y_crop", "ssim_y_crop", "lr_consistency"]
TIMEOUT = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    opts = {}
    if "stylegan2" in registry().names("generators"):  # a PULSE that runs long enough to be cancelled
        opts["pulse"] = {"random_generator": "true", "steps": "100000", "eps": "0", "gaussian_fit_samples": "2000",
                         "generator_options": json.dumps({"resolution": 32, "style_dim": 32, "n_mlp": 2,
                                                          "channel_max": 16})}
    cfg = ServeConfig(port=0, device="cpu", metrics=METRICS, method_options=opts, max_upload_mb=0.5,
                      max_pixels=500_000, temp_parent=tmp_path_factory.mktemp("serve"))
    srv = start(cfg)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    assert not isinstance(FOUND, str)
    driver = chromium_driver(*FOUND, profile=tmp_path_factory.mktemp("chromium-profile"))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("uploads")
    out = {"face": d / "face.png", "small": d / "small face.png", "notes": d / "notes.txt", "big": d / "big.png",
           "wide": d / "wide.png"}
    generated_face(64).save(out["face"])
    generated_face(32).save(out["small"])
    out["notes"].write_text("not an image\n")
    out["big"].write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(600_000))
    from PIL import Image

    Image.new("RGB", (800, 800), "gray").save(out["wide"])
    return out


def wait(driver: Any, condition: str, timeout: float = TIMEOUT) -> Any:
    """Wait until the JavaScript expression ``condition`` is truthy; returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(f"return {condition};"))


def open_page(driver: Any, srv: RunningServer) -> None:
    driver.get(srv.url + "/")
    wait(driver, "document.querySelectorAll('#methods .method').length > 0")


def choose_file(driver: Any, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('upload').replaceChildren(); showError('');")
    driver.find_element(By.ID, "file").send_keys(str(path))


def select_methods(driver: Any, names: list[str]) -> None:
    driver.execute_script(
        "for (const b of document.querySelectorAll('#methods input[type=checkbox]')) {"
        "  b.checked = arguments[0].includes(b.value); } refresh();", names)


def test_the_page_lists_every_method_and_why_some_cannot_run(server: RunningServer, browser: Any) -> None:
    open_page(browser, server)
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#methods .method')].map(m => ({name: m.dataset.method, "
        "disabled: m.querySelector('input').disabled, reason: (m.querySelector('.reason') || {}).textContent}))")
    cat = server.state.catalogue.methods
    assert [m["name"] for m in shown] == list(cat)
    for m in shown:
        entry = cat[m["name"]]
        assert m["disabled"] == (not entry.available)
        assert m["reason"] == (entry.reason if not entry.available else None)
    assert not cat["bicubic"].reason and not cat["pix2pixhd"].reason
    # The limits in the server's words: a small one as an exact count, not "0.0 MP".
    assert browser.execute_script("return [pixels(9999), pixels(500000)]") == ["9,999 px", "0.5 MP"]
    assert "up to 0.5 MB and 0.5 MP;" in browser.execute_script("return document.getElementById('limits').textContent")


def test_the_page_restores_at_a_sub_path_behind_a_proxy(server: RunningServer, browser: Any,
                                                        files: dict[str, Path]) -> None:
    """Served under ``/faces/`` by a proxy that strips the prefix (docs/serve.md): the page loads
    its script and methods, uploads, runs a job and shows its images, all through the prefix."""
    from selenium.webdriver.common.by import By

    proxy = PrefixProxy(server.url, "/faces/")
    try:
        browser.get(proxy.url + "/faces/")
        wait(browser, "document.querySelectorAll('#methods .method').length > 0")
        choose_file(browser, files["face"])
        wait(browser, "document.getElementById('upload-preview') && "
                      "document.getElementById('upload-preview').complete")
        select_methods(browser, ["bicubic"])
        browser.find_element(By.ID, "run").click()
        wait(browser, "state.job && state.job.finished")
        assert browser.execute_script("return state.job.status") == "done"
        wait(browser, "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
        shown = browser.execute_script("return [...document.querySelectorAll('#results img')].map(i => i.src)")
        assert shown and all(src.startswith(proxy.url + "/faces/files/") for src in shown)
        paths = [path for _, path, _ in proxy.seen]
        assert any(p.startswith("/faces/api/jobs/") for p in paths) and "/faces/static/app.js" in paths
        assert all(status < 400 for _, _, status in proxy.seen), proxy.seen
    finally:
        proxy.close()


def test_restore_a_face_with_two_methods_and_download_the_results(server: RunningServer, browser: Any,
                                                                   files: dict[str, Path]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(browser, server)
    choose_file(browser, files["face"])
    wait(browser, "document.getElementById('upload-preview') && document.getElementById('upload-preview').complete")
    assert browser.find_element(By.ID, "upload-name").text == "face.png: 64×64 px"
    select_methods(browser, ["bicubic", "pix2pixhd"])
    Select(browser.find_element(By.ID, "scale")).select_by_value("4")
    browser.find_element(By.ID, "degrade").click()
    browser.find_element(By.ID, "run").click()
    wait(browser, "state.job && state.job.finished")
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None  # no error shown
    # The chooser is emptied: picking the same file again (after the server let it go) uploads it again.
    assert browser.execute_script("return document.getElementById('file').value") == ""
    job_id = browser.execute_script("return state.job.id")
    # Every image decoded by the browser at the size the server made.
    wait(browser, "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
    sizes = browser.execute_script(
        "return [...document.querySelectorAll('#results img')].map(i => [i.dataset.role, i.dataset.method, "
        "i.naturalWidth, i.naturalHeight])")
    assert sorted(map(tuple, sizes)) == sorted([("lr", "", 16, 16), ("hr", "", 64, 64),
                                                ("output", "bicubic", 64, 64), ("output", "pix2pixhd", 64, 64)])
    # The metrics table holds the job's numbers, as the page formats them.
    status, job = get_json(server.url, f"/api/jobs/{job_id}")
    assert status == 200 and job["status"] == "done"
    table = browser.execute_script(
        "return [...document.querySelectorAll('#metrics tbody tr')].map(r => [r.dataset.method, "
        "Object.fromEntries([...r.querySelectorAll('td[data-metric]')].map(c => [c.dataset.metric, c.textContent]))])")
    assert [name for name, _ in table] == ["bicubic", "pix2pixhd"]
    for (name, cells), row in zip(table, job["result"]["methods"]):
        assert set(cells) == {*METRICS, "ms"}
        assert float(cells["ms"]) == row["ms_per_output"]  # what best.runtime ranks
        for metric in METRICS:
            value = row["metrics"][metric]["mean"]
            assert float(cells[metric]) == pytest.approx(value, rel=1e-3, abs=1e-5), (name, metric)
    assert 15 < float(table[0][1]["psnr_y_crop"]) < 60
    # Each download link returns the PNG (or the JSON) it names.
    links = browser.execute_script(
        "return [...document.querySelectorAll('#results a[download]')].map(a => [a.getAttribute('href'), "
        "a.getAttribute('download')])")
    names = sorted(d for _, d in links)
    assert names == sorted(["face_lr_x4.png", "face_hr.png", "face_x4_bicubic.png", "face_x4_pix2pixhd.png",
                            "face_x4_results.json"])
    from io import BytesIO

    from PIL import Image

    for href, name in links:
        status, headers, body = request(server.url, "GET", resolve(server.url + "/", href))
        assert status == 200
        assert headers["content-disposition"] == f'attachment; filename="{name}"'
        if name.endswith(".png"):
            assert headers["content-type"] == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"
            assert Image.open(BytesIO(body)).size == ((16, 16) if "_lr_" in name else (64, 64))
        else:
            assert json.loads(body)["methods"][1]["metrics"] == job["result"]["methods"][1]["metrics"]


@pytest.mark.parametrize(("key", "message"), [
    ("notes", "notes.txt: not an image in a format read here (PNG, JPEG, WEBP, BMP, TIFF, GIF)"),
    ("big", "big.png: 0.60 MB is over the upload limit of 0.50 MB (restorekit serve --max-upload-mb raises it)"),
    ("wide", "wide.png: 800×800 = 0.6 MP exceeds the limit of 0.5 MP (raise it with --max-pixels)"),
])
def test_a_bad_upload_shows_one_clear_line(server: RunningServer, browser: Any, files: dict[str, Path],
                                           key: str, message: str) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    choose_file(browser, files[key])
    wait(browser, "!document.getElementById('error').hidden")
    assert browser.find_element(By.ID, "error").text == message
    assert browser.find_element(By.ID, "run").get_attribute("disabled") is not None


def test_pulse_shows_its_steps_and_is_cancelled_from_the_page(server: RunningServer, browser: Any,
                                                              files: dict[str, Path]) -> None:
    from selenium.webdriver.common.by import By

    if not server.state.catalogue.methods.get("pulse") or not server.state.catalogue.methods["pulse"].available:
        pytest.skip("pulse cannot run here (no stylegan2 generator registered)")
    open_page(browser, server)
    choose_file(browser, files["small"])
    wait(browser, "document.getElementById('upload-preview') !== null")
    select_methods(browser, ["pulse"])
    browser.find_element(By.ID, "run").click()
    stage = wait(browser, "/step (\\d+) of 100000/.test(document.getElementById('stage').textContent) && "
                          "document.getElementById('stage').textContent")
    assert stage.startswith("pulse 1/1 try 1")
    assert browser.find_element(By.ID, "bar").get_attribute("value") is not None
    browser.find_element(By.ID, "cancel").click()
    wait(browser, "state.job && state.job.finished", 30)
    assert browser.execute_script("return state.job.status") == "cancelled"
    assert browser.find_element(By.CSS_SELECTOR, ".method-result[data-method=pulse]").get_attribute(
        "data-status") == "cancelled"
    assert browser.find_element(By.ID, "cancel").get_attribute("hidden") is not None


def test_polls_that_fail_are_retried_and_a_job_the_server_lost_ends_the_wait(server: RunningServer, browser: Any,
                                                                             files: dict[str, Path]) -> None:
    """Before, one failed poll (a network blip) left the page showing a running job for good, with
    Restore disabled until a reload."""
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    choose_file(browser, files["face"])
    wait(browser, "document.getElementById('upload-preview') !== null")
    select_methods(browser, ["bicubic"])
    browser.execute_script(  # the next three polls fail as an offline browser's do
        "const real = window.fetch; window.failed = 0;"
        "window.fetch = (u, o) => (/api\\/jobs\\/[^/]+$/.test(String(u)) && window.failed < 3)"
        "  ? (window.failed++, Promise.reject(new TypeError('Failed to fetch'))) : real(u, o);")
    browser.find_element(By.ID, "run").click()
    wait(browser, "state.job && state.job.finished")
    assert browser.execute_script("return [window.failed, state.job.status]") == [3, "done"]
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None  # the retry notice is gone

    browser.execute_script("state.job = {id: 'no-such-job', finished: false, status: 'running', stage: 'x'}; "
                           "refresh(); poll();")
    wait(browser, "state.job.finished")
    assert "the server no longer has this job" in browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "run").get_attribute("disabled") is None
