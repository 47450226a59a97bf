"""The HTML report: every section whose data exist appears; the page loads in a real browser."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import numpy as np
import pytest

from llm2nifti.analysis import Decomposition, connectivity, localize, networks
from llm2nifti.errors import UsageError
from llm2nifti.report import report

from test_connectomes import components_image, make_coupled
from test_glm import CONDITIONS, make_localizer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--enable-logging=stderr", "--v=0"]


@pytest.fixture(scope="module")
def full_dataset(tmp_path_factory):
    """Two tasks of one toy participant: coupled networks (ICA, connectivity) and a localizer."""
    tmp = tmp_path_factory.mktemp("report")
    root = tmp / "ds"
    layout, sets = make_coupled(root)
    effects = {c: np.zeros(layout.n_neurons) for c in CONDITIONS}
    effects["sentences"][sets[0]] = 3.0  # the localizer finds network 0's units
    make_localizer(root, effects)
    comp = tmp / "sub-toy_task-coupled_desc-planted_components.nii"
    components_image(layout, sets, comp)
    networks(comp, root)
    connectivity(comp, root, task="coupled", progress=False)
    localize(root, task="loc", top_percent=100 * 10 / layout.n_neurons, progress=False)
    return root


def _browser(page, tmp_path, *extra):
    """Run headless Chromium on ``page``; return (stderr console lines, stdout)."""
    out = subprocess.run([CHROMIUM, *_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra,
                          page.as_uri()], capture_output=True, text=True, timeout=120)
    console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line]
    return console, out.stdout


def test_sections_present_in_the_data_appear(full_dataset):
    (page,) = report(full_dataset)
    html = page.read_text()
    for section in ("dataset", "networks", "localizer", "connectivity"):
        assert f'<section id="{section}"' in html
    for absent in ("recurrence", "interventions"):
        assert f'<section id="{absent}"' not in html
    assert "Recurrence: run `llm2nifti recurrence`" in html  # said what would make it
    # the localizer overlaps the planted network entirely (10 units; chance 10 * 40 / 192)
    assert re.search(r"<td>10</td>\s*<td>2\.1</td>", html)
    # self-contained: every image embedded as a decodable PNG, nothing fetched from elsewhere
    sources = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert len(sources) == 4  # network units, sizes per layer, localizer t, connectome
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_components_are_drawn_right_after_decompose(tmp_path):
    """decompose alone is enough for a page that shows its maps and the command that follows."""
    from llm2nifti.analysis import decompose

    root = tmp_path / "ds"
    make_coupled(root)
    res = decompose(root, Decomposition(backend="fast", n_components=3, n_init=1))
    (page,) = report(root)
    html = page.read_text()
    assert '<section id="components"' in html and '<section id="networks"' not in html
    assert "3 components at the mlp site" in html
    assert f"llm2nifti networks {res.zmaps} --dataset {root}" in html
    assert "Networks: run `llm2nifti networks` on a components image" in html
    sources = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', html)
    assert len(sources) == 1 and base64.b64decode(sources[0])[:4] == b"\x89PNG"


def test_bad_input(full_dataset, tmp_path):
    with pytest.raises(UsageError, match="no participant 'nobody'.*it has toy"):
        report(full_dataset, participant="nobody")
    with pytest.raises(UsageError, match="no evaluation.json"):
        report(full_dataset, evaluations=[tmp_path])


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_page_loads_in_a_browser_without_console_errors(full_dataset, tmp_path):
    (page,) = report(full_dataset)
    # the check can fail: a page with a script error is caught
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>console.error('planted'); nothing();</script></body></html>")
    console, _ = _browser(broken, tmp_path, "--dump-dom")
    assert any("planted" in line for line in console)
    console, dom = _browser(page, tmp_path, "--dump-dom")
    assert console == []
    for section in ("dataset", "networks", "localizer", "connectivity"):
        assert f'id="{section}"' in dom
    shot = tmp_path / "report.png"
    _browser(page, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
