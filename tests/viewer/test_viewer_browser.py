"""End to end in a real headless Chromium (Selenium + Debian's chromedriver, no downloads).

The page opens a case, the slider moves the slice, and an uploaded synthetic study is
segmented by a real :class:`~tumorseg.inference.Predictor` (bundle preprocessing and
sliding window; a pointwise stand-in network instead of trained weights) and shown. Screenshots
go to ``test-artifacts/`` in the repository root.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tumorseg.conventions import CHANNEL_ORDER

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
BUNDLE = REPO_ROOT / "bundles" / "brats_mri_segmentation"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
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
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def live(outputs: Path, dataset: Path) -> Iterator[Any]:
    from tumorseg.viewer import make_server

    srv = make_server(
        str(outputs), data_dir=str(dataset), port=0, factories={"tiny": _real_predictor}
    )
    srv.start_background()
    try:
        yield srv
    finally:
        srv.close()


def _wait(what: str, condition: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _loaded(driver: Any, element_id: str) -> Any:
    return driver.execute_script(
        "const e=document.getElementById(arguments[0]);"
        "return e&&e.complete&&e.naturalWidth>0?e.getAttribute('src'):null;",
        element_id,
    )


def _pixels(element: Any) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")).astype(int)


def _overlay_fraction(pixels: np.ndarray) -> float:
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    coloured = (np.maximum(r, g) - b) > 60  # red, green and yellow all lack blue; grey does not
    return float(coloured.mean())


def test_viewer_in_chromium(browser: Any, live: Any, new_study: list[Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    ARTIFACTS.mkdir(exist_ok=True)
    browser.get(f"{live.url}/#case=SYN2021_000")
    first = _wait("the axial slice", lambda: _loaded(browser, "img-pred-axial"))
    assert browser.find_element(By.ID, "title").text == "SYN2021_000"
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.case")
    assert [r.get_attribute("data-case") for r in rows] == ["SYN2021_000", "SYN2021_001"]
    assert _loaded(browser, "img-ref-axial"), "reference shown beside the prediction"
    image = browser.find_element(By.ID, "img-pred-axial")
    before = _pixels(image)
    assert _overlay_fraction(before) > 0.005, "the tumour overlay is drawn"
    browser.save_screenshot(str(ARTIFACTS / "viewer-case.png"))

    slider = browser.find_element(By.ID, "slider-axial")
    for _ in range(4):
        slider.send_keys(Keys.ARROW_RIGHT)
    moved = _wait(
        "a new slice",
        lambda: (src := _loaded(browser, "img-pred-axial")) and src != first and src,
    )
    assert "index=" in moved
    time.sleep(0.2)
    assert not np.array_equal(_pixels(image), before), "moving the slider changes the image"
    browser.save_screenshot(str(ARTIFACTS / "viewer-slider.png"))

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
        timeout=90,
    )
    assert browser.find_element(By.ID, "job-status").text.startswith("done")
    _wait("the uploaded case's slice", lambda: _loaded(browser, "img-pred-axial"))
    time.sleep(0.2)
    segmented = _pixels(browser.find_element(By.ID, "img-pred-axial"))
    assert _overlay_fraction(segmented) > 0.002, "the new segmentation is shown"
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.case")) == 3
    browser.save_screenshot(str(ARTIFACTS / "viewer-upload.png"))
