"""End to end in a real headless Chromium (Selenium + Debian's chromedriver, no downloads).

NiiVue draws the volumes with WebGL2 (SwiftShader, Chromium's software GL, in headless mode).
A case opens; the canvases draw; the crosshair, window/level, the ET toggle, zoom and the 3D
view change what is drawn (read back from element screenshots); every request the page makes
goes to the viewer on 127.0.0.1 (Chromium's network log); an uploaded synthetic study is
segmented by a real :class:`~tumorseg.inference.Predictor` (bundle preprocessing and sliding
window; a pointwise stand-in network instead of trained weights) and shown. With
``../shared/data`` a real study is shown too. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tumorseg.conventions import CHANNEL_ORDER

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
SHARED = REPO_ROOT.parent / "shared" / "data"
BUNDLE = REPO_ROOT / "bundles" / "brats_mri_segmentation"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--use-angle=swiftshader",  # WebGL2 without a GPU
    "--enable-unsafe-swiftshader",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1500,1000",
)


class BrightRegions(torch.nn.Module):
    """Stand-in network: region logits from how bright FLAIR and T1ce are (z-scored)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flair, t1ce = x[:, 0:1], x[:, 2:3]
        logits = torch.cat([4 * (flair - 1.0), 4 * (t1ce - 1.2), 4 * (t1ce - 1.8)], dim=1)
        return torch.where(x[:, 0:1] == 0, torch.full_like(logits, -10.0), logits)


def _real_predictor() -> Any:
    from tumorseg.inference import Predictor

    return Predictor.from_bundle(BUNDLE, network=BrightRegions(), device="cpu")


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian chromium and chromium-driver (make browser installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    # Selenium Manager must never try to download a browser or driver.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _serve(outputs: Path, dataset: Path, **kwargs: Any) -> Iterator[Any]:
    from tumorseg.viewer import make_server

    srv = make_server(str(outputs), data_dir=str(dataset), port=0, **kwargs)
    srv.start_background()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def live(outputs: Path, dataset: Path) -> Iterator[Any]:
    yield from _serve(outputs, dataset, factories={"tiny": _real_predictor})


def _wait(what: str, condition: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _ready(driver: Any, case_id: str) -> None:
    _wait(
        f"case {case_id} drawn",
        lambda: driver.execute_script(
            "const s=window.tumorsegViewer;return !!(s&&s.ready&&s.summary.case_id===arguments[0])",
            case_id,
        ),
        timeout=120,
    )
    time.sleep(0.5)  # the last frame


def _pixels(driver: Any, element_id: str) -> np.ndarray:
    from PIL import Image
    from selenium.webdriver.common.by import By

    png = driver.find_element(By.ID, element_id).screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _count(pixels: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(pixels - np.array(colour)).max(axis=-1) <= tol).sum())


def _voxel(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, "voxel").text)


def _click(driver: Any, element_id: str, dx: int, dy: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, element_id)
    ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).click().perform()
    time.sleep(0.4)


def _set(driver: Any, element_id: str, value: str) -> None:
    driver.execute_script(
        "const e=document.getElementById(arguments[0]);e.value=arguments[1];"
        "e.dispatchEvent(new Event(e.type==='checkbox'?'change':'input'));"
        "e.dispatchEvent(new Event('change'));",
        element_id,
        value,
    )
    time.sleep(0.6)


def _requested_urls(driver: Any) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _assert_local(urls: list[str]) -> None:
    """Every request went to 127.0.0.1 (``chrome:``: the browser's own pages, not network)."""
    assert any("/api/volume/" in u for u in urls), "the network log holds the page's requests"
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        assert parts.scheme in ("data", "blob", "chrome") or parts.hostname == "127.0.0.1", url


YELLOW, GREEN, RED = (250, 220, 20), (40, 200, 60), (230, 30, 30)


def test_niivue_case_crosshair_window_toggles_and_3d(browser: Any, live: Any) -> None:
    from selenium.webdriver.common.by import By

    ARTIFACTS.mkdir(exist_ok=True)
    browser.get(f"{live.url}/#case=SYN2021_000")
    _ready(browser, "SYN2021_000")
    assert browser.find_element(By.ID, "title").text == "SYN2021_000"
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.case")
    assert [r.get_attribute("data-case") for r in rows] == ["SYN2021_000", "SYN2021_001"]
    assert browser.execute_script("return typeof niivue.Niivue") == "function"

    # The canvas draws: the head (grey) and the overlay (colours), the reference beside it.
    _set(browser, "opacity", "1")
    pred = _pixels(browser, "nv-pred")
    assert (pred.max(axis=-1) > 40).mean() > 0.05, "the volume is drawn"
    assert _count(pred, GREEN) > 50 and _count(pred, YELLOW) > 10, "the labels are drawn"
    assert browser.find_element(By.ID, "pane-ref").is_displayed()
    assert _count(_pixels(browser, "nv-ref"), GREEN) > 50, "the reference is drawn"
    browser.save_screenshot(str(ARTIFACTS / "viewer-case.png"))

    # Moving the crosshair (a click in the axial view) changes the voxel value shown.
    before = _voxel(browser)
    assert re.search(r"flair -?\d", before) and "prediction" in before, before
    _click(browser, "nv-pred", -150, 60)
    first = _voxel(browser)
    _click(browser, "nv-pred", -100, 120)
    second = _voxel(browser)
    values = [re.search(r"flair (-?[\d.]+)", t).group(1) for t in (first, second)]  # type: ignore[union-attr]
    assert first != before and values[0] != values[1], (before, first, second)
    # Hovering shows the voxel under the pointer without moving the crosshair.
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = browser.find_element(By.ID, "nv-pred")
    ActionChains(browser).move_to_element_with_offset(canvas, -125, 95).perform()
    time.sleep(0.4)
    hovered = _voxel(browser)
    assert hovered.startswith("pointer") and hovered != second, (second, hovered)

    # Window/level changes the rendered pixels.
    shown = _pixels(browser, "nv-pred")
    level = float(browser.find_element(By.ID, "win-level").get_attribute("value"))
    width = float(browser.find_element(By.ID, "win-width").get_attribute("value"))
    _set(browser, "win-width", str(width / 4))
    _set(browser, "win-level", str(level + width / 4))
    windowed = _pixels(browser, "nv-pred")
    assert np.abs(windowed - shown).max(axis=-1).astype(bool).mean() > 0.02
    browser.find_element(By.ID, "win-auto").click()
    time.sleep(0.6)

    # Toggling ET removes every yellow pixel, in the slices and in 3D.
    with_et = _pixels(browser, "nv-pred")
    render = _pixels(browser, "nv-3d")
    assert _count(render, GREEN, tol=90) > 200, "the 3D view renders the segmentation"
    assert _count(with_et, YELLOW) > 10
    browser.find_element(By.CSS_SELECTOR, ".cls[value=ET]").click()
    time.sleep(0.6)
    without_et = _pixels(browser, "nv-pred")
    assert _count(without_et, YELLOW) == 0, "ET hidden"
    assert _count(without_et, GREEN) > 50, "the other classes stay"
    browser.save_screenshot(str(ARTIFACTS / "viewer-no-et.png"))
    browser.find_element(By.CSS_SELECTOR, ".cls[value=ET]").click()

    # The 3D view turns when dragged.
    canvas3d = browser.find_element(By.ID, "nv-3d")
    ActionChains(browser).move_to_element(canvas3d).click_and_hold().move_by_offset(
        80, 20
    ).release().perform()
    time.sleep(0.6)
    assert not np.array_equal(_pixels(browser, "nv-3d"), render), "the 3D view rotates"

    # Zoom, modality switch and outline-on-fill all redraw.
    shown = _pixels(browser, "nv-pred")
    browser.find_element(By.ID, "zoom-in").click()
    time.sleep(0.6)
    assert not np.array_equal(_pixels(browser, "nv-pred"), shown), "zoom"
    browser.find_element(By.ID, "zoom-reset").click()
    shown = _pixels(browser, "nv-pred")
    _set(browser, "modality", "t1ce")
    _wait("t1ce", lambda: "t1ce" in _voxel(browser))
    assert not np.array_equal(_pixels(browser, "nv-pred"), shown), "modality switch"
    _set(browser, "compare", "outline")
    time.sleep(1.0)
    assert not browser.find_element(By.ID, "pane-ref").is_displayed()
    assert "outline" in browser.find_element(By.ID, "cap-pred").text
    browser.save_screenshot(str(ARTIFACTS / "viewer-outline.png"))

    # Another case from the list; the list sorts by Dice.
    browser.find_element(By.CSS_SELECTOR, "tr.case[data-case=SYN2021_001]").click()
    _ready(browser, "SYN2021_001")
    browser.find_element(By.CSS_SELECTOR, "th button[data-sort=dice_WT]").click()
    _wait(
        "sorted rows",
        lambda: (
            browser.find_element(By.CSS_SELECTOR, "th button[data-sort=dice_WT]").get_attribute(
                "class"
            )
            == "on"
        ),
    )

    _assert_local(_requested_urls(browser))
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_upload_segments_and_opens_in_the_page(
    browser: Any, live: Any, new_study: list[Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    ARTIFACTS.mkdir(exist_ok=True)
    browser.get(f"{live.url}/")
    _ready(browser, "SYN2021_000")
    # A non-NIfTI file is refused with a message on the page, not a crash.
    bad = tmp_path / "notes.nii.gz"
    bad.write_bytes(b"not an image")
    for modality, path in zip(CHANNEL_ORDER, new_study, strict=True):
        browser.find_element(By.ID, f"up-{modality}").send_keys(str(path))
    browser.find_element(By.ID, "up-t2").send_keys(str(bad))
    browser.find_element(By.ID, "up-submit").click()
    _wait("the refusal", lambda: "refused" in browser.find_element(By.ID, "job-status").text)

    # The real study: segmented in the background, then opened.
    browser.find_element(By.ID, "up-t2").send_keys(str(new_study[3]))
    browser.find_element(By.ID, "up-submit").click()
    _wait(
        "the segmentation",
        lambda: browser.find_element(By.ID, "title").text.startswith("upload-"),
        timeout=120,
    )
    case_id = browser.find_element(By.ID, "title").text
    assert browser.find_element(By.ID, "job-status").text.startswith("done")
    _ready(browser, case_id)
    _set(browser, "opacity", "1")
    segmented = _pixels(browser, "nv-pred")
    coloured = _count(segmented, GREEN) + _count(segmented, RED) + _count(segmented, YELLOW)
    assert coloured > 20, "the new segmentation is shown"
    assert not browser.find_element(By.ID, "pane-ref").is_displayed(), "no reference"
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.case")) == 3
    browser.save_screenshot(str(ARTIFACTS / "viewer-upload.png"))
    _assert_local(_requested_urls(browser))


@pytest.mark.slow  # 60-90 s: reading and cropping a 240x240x155 study on a shared core
@pytest.mark.shared_data
def test_real_study_screenshot(browser: Any, tmp_path: Path) -> None:
    """TCGA-DU-7294 with one BraTS 2020 algorithm's segmentation as the "prediction"."""
    from selenium.webdriver.common.by import By

    study = SHARED / "brats2020_layout"
    algorithm = SHARED / "reference_segmentations" / "TCGA-DU-7294" / "isen-20.nii.gz"
    if not (study.is_dir() and algorithm.is_file()):
        pytest.skip(f"needs the shared real studies in {SHARED}")
    outputs = tmp_path / "out"
    outputs.mkdir()
    shutil.copy(algorithm, outputs / "TCGA-DU-7294.nii.gz")
    ARTIFACTS.mkdir(exist_ok=True)
    for srv in _serve(outputs, study):
        browser.get(f"{srv.url}/#case=TCGA-DU-7294")
        _ready(browser, "TCGA-DU-7294")
        text = browser.find_element(By.ID, "cases").text
        assert "TCGA-DU-7294" in text
        pred = _pixels(browser, "nv-pred")
        assert (pred.max(axis=-1) > 40).mean() > 0.05
        assert _count(pred, GREEN, tol=90) > 50, "edema of the real study drawn"
        assert _count(_pixels(browser, "nv-3d"), GREEN, tol=90) > 200
        browser.save_screenshot(str(ARTIFACTS / "viewer-real-TCGA-DU-7294.png"))
        _set(browser, "compare", "outline")
        time.sleep(1.5)
        browser.save_screenshot(str(ARTIFACTS / "viewer-real-TCGA-DU-7294-outline.png"))
        _assert_local(_requested_urls(browser))


def test_report_viewer_opens_from_disk(browser: Any, outputs: Path, dataset: Path) -> None:
    """``tumorseg report``'s viewer.html in the browser from file://: no server, no network."""
    from selenium.webdriver.common.by import By

    from tumorseg.viewer import build_report

    index = build_report(outputs, data_dir=dataset, gif=False, montage_slices=2)
    browser.get((index.parent / "viewer.html").as_uri())
    _ready(browser, "SYN2021_000")
    assert [
        r.get_attribute("data-case") for r in browser.find_elements(By.CSS_SELECTOR, "tr.case")
    ] == [
        "SYN2021_000",
        "SYN2021_001",
    ]
    _set(browser, "opacity", "1")
    pred = _pixels(browser, "nv-pred")
    assert _count(pred, GREEN) > 50 and _count(pred, YELLOW) > 10
    assert _count(_pixels(browser, "nv-3d"), GREEN, tol=90) > 200
    assert browser.find_element(By.ID, "pane-ref").is_displayed()
    browser.find_element(By.CSS_SELECTOR, "tr.case[data-case=SYN2021_001]").click()
    _ready(browser, "SYN2021_001")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "report-viewer.png"))
    urls = _requested_urls(browser)
    assert any(u.endswith("volumes/case-0001.js") for u in urls)
    assert all(
        urllib.parse.urlsplit(u).scheme in ("file", "data", "blob", "chrome") for u in urls
    ), urls
