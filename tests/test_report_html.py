"""W/report.html: what the page holds, and a real headless browser (Chromium) rendering it with
every picture decoded and no script error — and catching a page where that is not so."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from kdad_jax import main as kdad_main
from kdad_jax.report import html as html_report
from tests.test_efficientad import efficientad_config

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def test_gallery_picks_false_alarms_and_misses_first():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.2, 0.9, 0.5, 0.3, 0.8, 0.1, 0.95])
    picks = html_report.gallery_picks(labels, scores, per_group=2)
    assert picks == {"worst good": [1, 2], "best anomalous": [6, 4], "worst anomalous": [5, 3]}
    few = html_report.gallery_picks(np.array([0, 1, 1]), np.array([0.1, 0.5, 0.7]), per_group=2)
    assert few == {"worst good": [0], "best anomalous": [2, 1], "worst anomalous": []}  # none twice


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    from tests.conftest import build_tree
    root = tmp_path_factory.mktemp("report")
    build_tree(root / "data", n_good=3, n_bad=5)
    config = efficientad_config.get_config("smoke")
    config.data.root, config.eval.num_heatmaps = str(root / "data"), 0
    results = kdad_main.run(config, str(root / "run"))
    return root / "run", results


def test_report_is_one_self_contained_page(report_run):
    workdir, results = report_run
    page = (workdir / "report.html").read_text()
    sources = re.findall(r"src='([^']*)'", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # nothing outside
    assert not re.search(r"(href|src)=['\"](https?:|file:|/)", page)
    widget = results["per_category"]["widget"]
    assert f"<td>{100 * widget['image_auroc']:.1f}</td>" in page and "AU-PRO (FPR≤0.3)" in page
    gallery = json.loads((workdir / "report" / "widget" / "gallery.json").read_text())
    assert gallery["threshold"] == widget["thresholds"]["image_threshold"]
    assert {e["group"] for e in gallery["images"]} == {"worst good", "best anomalous", "worst anomalous"}
    assert len(sources) == 1 + len(gallery["images"])  # the curves and every gallery panel
    assert "good images scoring highest" in page and "&quot;method&quot;: &quot;efficientad&quot;" in page
    assert "Teacher" in page and "Environment" in page


def _browser():
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    message = f"no headless browser ({', '.join(BROWSERS)}) on this machine; CI installs chromium"
    if os.environ.get("KDAD_REQUIRE_EXTRAS") == "1":  # CI: the browser is required like the extras
        pytest.fail(message)
    pytest.skip(message)


def _page_check(path) -> dict:
    proc = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", f"file://{path}"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<p id="page-check"([^>]*)>', proc.stdout)
    assert found, "the page's check did not run"
    return dict(re.findall(r'data-(\w+)="(\d+)"', found.group(1)))


def test_report_renders_in_a_headless_browser(report_run, tmp_path):
    workdir, _ = report_run
    check = _page_check(workdir / "report.html")
    assert int(check["images"]) >= 2 and check["broken"] == "0" and check["errors"] == "0"
    # The same check sees a picture that does not decode and a script that fails.
    page = (workdir / "report.html").read_text()
    broken = page.replace("</body>", "<img src='data:image/png;base64,iVBORw0KGgoAAAA'>"
                                     "<script>undefined_function();</script></body>")
    (tmp_path / "broken.html").write_text(broken)
    check = _page_check(tmp_path / "broken.html")
    assert check["broken"] == "1" and check["errors"] == "1"
