"""The runs page in a real headless Chromium (Debian's): two training runs of the digits
example logging through the embedded platform; the page shows their curves growing with no
reload, highlights the hyperparameter that differs, and marks them finished when they end.
Screenshots are checked for the drawn curves."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelcloud_testing.embedded import Embedded
from modelcloud_testing.tracking import DIGITS_TRAINING

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
FIRST_SERIES = (0x54, 0x70, 0xC6)  # ECharts' first palette colour, #5470c6


def curve_pixels(png: Path) -> int:
    """Pixels close to the first series' colour: the curves actually drawn."""
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int32)
    distance = np.abs(pixels - np.array(FIRST_SERIES)).sum(axis=2)
    return int((distance < 40).sum())


SERIES_OF = "((metric) => window.dashboard.charts.get(metric).getOption().series)"


def points_shown(page: object, metric: str) -> int:
    series = page.evaluate(f"{SERIES_OF}({metric!r})")  # type: ignore[attr-defined]
    return sum(len(s["data"]) for s in series)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
def test_the_page_follows_two_runs_live(tracking_env: Embedded, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    token = Path(tmp_path / "platform" / "admin.token").read_text().strip()
    trainings = [
        subprocess.Popen(
            [
                sys.executable,
                str(DIGITS_TRAINING),
                "--name",
                name,
                "--alpha",
                alpha,
                "--epochs",
                "30",
                "--pause",
                "0.3",
            ],
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, alpha in (("small-alpha", "0.0001"), ("large-alpha", "0.01"))
    ]
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{tracking_env.url}/v1/projects/digits/runs/dashboard#token={token}")
            page.wait_for_function(
                "() => window.dashboard && window.dashboard.charts.size >= 4"
                " && window.dashboard.runs.size === 2",
                timeout=60_000,
            )
            assert "token" not in page.url  # taken out of the address bar
            page.wait_for_selector(".live.on")
            first = points_shown(page, "acc")
            page.wait_for_timeout(2500)
            second = points_shown(page, "acc")
            assert second > first, "the curves grow while the runs train, with no reload"
            during = tmp_path / "during.png"
            page.screenshot(path=str(during), full_page=True)

            changed = page.locator("td.changed").all_inner_texts()
            assert sorted(changed) == ["0.0001", "0.01"]  # alpha differs; epochs does not

            page.wait_for_function(
                "() => document.querySelectorAll('td.status-finished').length === 2",
                timeout=60_000,
            )
            assert points_shown(page, "acc") == 60  # 30 epochs of each run, none twice
            after = tmp_path / "after.png"
            page.screenshot(path=str(after), full_page=True)
            raw = page.evaluate(f"{SERIES_OF}('loss')[0].data.map((p) => p[1])")
            page.fill("#smoothing", "0.8")
            page.dispatch_event("#smoothing", "input")
            smoothed = page.evaluate(f"{SERIES_OF}('loss')[0].data.map((p) => p[1])")
            assert smoothed[0] == raw[0]  # the moving average starts at the first point
            assert smoothed[-1] != raw[-1]  # and then lags behind the curve
            browser.close()
    finally:
        errors = [training.communicate(timeout=120)[1] for training in trainings]
    for training, error in zip(trainings, errors, strict=True):
        assert training.returncode == 0, error
    assert curve_pixels(during) > 200  # the curves are on the screenshot
    assert curve_pixels(after) > curve_pixels(during)  # and they grew
