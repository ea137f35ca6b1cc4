"""The HTML report seen in a real browser: headless Chromium opens the tiny preset's report, runs its
JavaScript, and every figure must open as a decoded image and every table must be listed with its data.

Snakemake's report is a JavaScript application over data embedded in one HTML file: nothing shows without
its scripts running. A probe script, added to a copy of the report, clicks through the app as a reader
would (category "Figures", each figure's eye button; category "Tables") and writes what it found into the
page, which Chromium then dumps (``--dump-dom`` after the scripts ran, in virtual time)."""
import base64
import html
import json
import re
import shutil
import subprocess

import pytest

from conftest import run_snakemake

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian: apt-get install "
                                                           "chromium; `make setup` installs it where it runs as root)")

FIGURES = {"error_vs_size", "training_curves", "itnn_rollout_error", "trajectories_A", "trajectories_B",
           "trajectories_C", "hh_m", "pinn_vs_ddnn", "speedup_vs_n", "speedup_vs_k", "time_vs_error", "solver_throughput"}
TABLES = {"accuracy.csv": "problem,surrogate,n_train", "speedup.csv": "sweep,workload,device",
          "transfer.csv": "test_on,problem,surrogate"}

PROBE = """<script>
(async function () {
  const found = {figures: {}, tables: {}, errors: []};
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const write = () => {
    let p = document.getElementById('probe');
    if (!p) { p = document.createElement('pre'); p.id = 'probe'; document.body.appendChild(p); }
    p.textContent = JSON.stringify(found);
  };
  const byText = (text) => Array.from(document.querySelectorAll('#app *'))
    .filter((e) => e.children.length <= 2 && e.textContent.trim() === text).pop();
  const rows = () => Array.from(document.querySelectorAll('#app tr'))
    .map((tr) => [tr.querySelector('td') ? tr.querySelector('td').textContent.trim() : '', tr])
    .filter(([name]) => name);
  try {
    await sleep(1000);
    byText('Figures').click();
    await sleep(500);
    for (const [name] of rows()) {
      const tr = rows().find(([n]) => n === name)[1];
      tr.querySelector('a').click();                     // the eye button: show the figure
      await sleep(500);
      const img = Array.from(document.querySelectorAll('img')).find((i) => i.src.startsWith('data:image/png'));
      found.figures[name.split('/').pop()] = img ? [img.complete, img.naturalWidth, img.naturalHeight] : null;
    }
    byText('Results').click();                           // back to the categories
    await sleep(500);
    byText('Tables').click();
    await sleep(500);
    for (const [name, tr] of rows()) {
      const a = tr.querySelector('a');
      found.tables[name.split('/').pop()] = a ? a.getAttribute('href') : null;
    }
  } catch (e) { found.errors.push(String(e)); }
  write();
})();
</script>"""


def _chromium(*args, timeout=180):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,1000",
           "--virtual-time-budget=30000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report(tmp_path_factory, request):
    """The tiny preset run through the workflow and its HTML report (as `make run` makes it)."""
    from conftest import TINY, _merge
    import copy

    import yaml

    tmp = tmp_path_factory.mktemp("report")
    cfg = copy.deepcopy(TINY)
    _merge(cfg, {"results_dir": str(tmp / "results"), "speed": {"n_cells": [300], "k_sweep": [1, 26]}})
    extra = tmp / "tiny.yaml"
    extra.write_text(yaml.safe_dump(cfg))
    run = run_snakemake("--cores", "2", "--configfile", "config/quick.yaml", str(extra), timeout=1800)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    out = tmp / "report.html"
    rep = run_snakemake("--configfile", "config/quick.yaml", str(extra), "--report", str(out))
    assert rep.returncode == 0, (rep.stdout + rep.stderr)[-3000:]
    return out


def test_the_report_shows_every_figure_and_lists_every_table_with_its_data(report, tmp_path):
    probe = tmp_path / "probe.html"
    text = report.read_text()
    at = text.rfind("</body>")
    probe.write_text(text[:at] + PROBE + text[at:])
    res = _chromium("--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"the probe wrote nothing (the report's scripts did not run?): {res.stderr[-1500:]}"
    found = json.loads(html.unescape(m.group(1)))
    assert not found["errors"], found["errors"]
    figures = {name.rsplit(".", 1)[0]: v for name, v in found["figures"].items()}
    assert set(figures) == FIGURES
    for name, img in figures.items():  # shown, and decoded by the browser into a real image
        assert img is not None, f"{name}: no image shown"
        complete, width, height = img
        assert complete and width > 300 and height > 200, (name, img)
    assert set(found["tables"]) == set(TABLES)
    for name, href in found["tables"].items():  # each table's link carries the table itself
        assert href and href.startswith("data:text/csv"), (name, (href or "")[:60])
        data = base64.b64decode(href.split("base64,", 1)[1]).decode()
        assert data.startswith(TABLES[name]) and len(data.splitlines()) >= 3, (name, data[:200])


def test_the_report_s_first_screen_is_drawn(report, tmp_path):
    import numpy as np
    from PIL import Image

    shot = tmp_path / "report.png"
    res = _chromium(f"--screenshot={shot}", report.as_uri())
    assert shot.exists(), res.stderr[-1500:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 1000)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is (nearly) blank"
    # drawn: each of the first screen's three columns (the navigation, the introduction's text, the workflow graph)
    # carries ink (the loading screen: 0.1% of the page), and the navigation's icons and the graph's rule nodes
    # are coloured (the page's styling is applied by a script and fonts differ between Chromium builds, so the
    # thresholds are a fraction of what a drawn page shows: 3-5% ink a column, 800 / 600 coloured pixels)
    a = np.asarray(img).astype(int)
    inked = a.sum(axis=2) < 740
    saturated = (a.max(axis=2) - a.min(axis=2)) > 60
    columns = {"navigation": (0, 280), "introduction": (280, 820), "workflow graph": (820, 1400)}
    ink = {name: float(inked[:, x0:x1].mean()) for name, (x0, x1) in columns.items()}
    colour = {name: int(saturated[:, x0:x1].sum()) for name, (x0, x1) in columns.items()}
    assert all(v > 0.01 for v in ink.values()), ("a column of the first screen is blank", ink)
    assert colour["navigation"] > 200 and colour["workflow graph"] > 200, ("no coloured icons or rule nodes", colour)
