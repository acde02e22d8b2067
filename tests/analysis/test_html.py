"""report.html: one self-contained page, rendered by a real headless browser (CI installs Debian's
chromium; TRH_REQUIRE_CHROMIUM=1 makes a missing browser a failure instead of a skip)."""

import os
import re
import subprocess

import matplotlib.image
import pytest

from analysis.report import build_report
from tests.tools import required_tool

from .test_grouping import _config, _run


def _report(tmp_path):
    root = tmp_path / "results"
    for method, (a, b) in {"cppo": (0.5, 0.6), "dppo": (0.4, 0.45)}.items():
        for seed in range(3):
            _run(root, f"base_s-{method}-s{seed}-{method}{seed}", {**_config(seed, 0.1), "method": {"name": method}},
                 [0.3, a + 0.01 * seed, b])
    return build_report(root, tmp_path / "report", table_formats=("md",))["html"]


def test_the_page_holds_every_table_and_figure_and_nothing_outside(tmp_path):
    stale = tmp_path / "report" / "table_from_an_earlier_report.md"
    stale.parent.mkdir()
    stale.write_text("old")
    os.utime(stale, (1_000_000, 1_000_000))
    page = _report(tmp_path)
    assert "table_from_an_earlier_report" not in page.read_text()  # what this report wrote, only
    stale.unlink()
    text = page.read_text()
    figures = sorted(p.stem for p in page.parent.glob("*.png"))
    assert figures and all(f"alt='{stem}'" in text for stem in figures)
    assert text.count("src='data:image/png;base64,") == len(figures)
    assert not re.search(r"(src|href)=['\"](?!data:|#)", text)  # no link out of the page
    tables = sorted(p.stem for p in page.parent.glob("*.md") if p.name != "report.md")
    assert re.findall(r"<summary>(.*?)</summary>", text) == tables and "table1" in tables
    assert "<table>" in text and "Table 1" in text


def test_headless_chromium_renders_the_page(tmp_path):
    browser = required_tool("chromium", "chromium-browser", env="TRH_REQUIRE_CHROMIUM",
                            install="Debian: apt-get install chromium")
    page = _report(tmp_path)
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "<h2>Figures</h2>" in dom.stdout and dom.stdout.count("<img") >= 2
    shot = tmp_path / "shot.png"
    done = subprocess.run([*flags, "--window-size=1280,1600", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1600, 1280) and pixels.std() > 0.05  # text and tables, not a blank page
