"""``W/report.html``: one self-contained page per run that a person reads.

The results table (with image AUROC per defect type and the reasons for undefined metrics), each
category's ROC / PRO curves and a heat-map gallery — the good test images that score highest
(the likeliest false alarms), the anomalous ones that score highest and lowest (the likeliest
misses) — each with its score and the image threshold, then the teacher's record, the config and
the environment. Every picture is embedded (base64 PNG), so the file can be mailed or archived
alone. A small script on the page checks, once loaded, that every picture decoded and no script
failed, and says so at the bottom (``#page-check``; the browser test reads it).

Evaluation writes the gallery of each category (``write_gallery``: panels and ``gallery.json`` in
``W/report/<category>/``); ``write_report`` assembles the page from those, ``W/plots/`` and the
results, so a partial run's page shows the categories that finished.
"""

import base64
import html
import json
import os
from typing import Dict, List, Sequence

import numpy as np

from kdad_jax import files
from kdad_jax.evaluation import metrics
from kdad_jax.report import tables, visualize

REPORT_FILE = "report.html"
GALLERY_FILE = "gallery.json"
GROUPS = (("worst good", "good images scoring highest (false alarms first)"),
          ("best anomalous", "anomalous images scoring highest"),
          ("worst anomalous", "anomalous images scoring lowest (misses first)"))


def gallery_picks(labels: np.ndarray, scores: np.ndarray, per_group: int = 3) -> Dict[str, List[int]]:
    """{group: test indices}: the ``per_group`` highest-scoring good images, and the highest- and
    lowest-scoring anomalous ones (an image shown once, in the first group that takes it)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    good = [int(i) for i in np.flatnonzero(labels == 0)[np.argsort(-scores[labels == 0], kind="stable")]]
    bad = [int(i) for i in np.flatnonzero(labels == 1)[np.argsort(-scores[labels == 1], kind="stable")]]
    best = bad[:per_group]
    worst = [i for i in reversed(bad) if i not in best][:per_group]
    return {"worst good": good[:per_group], "best anomalous": best, "worst anomalous": worst}


def write_gallery(folder: str, data, maps: np.ndarray, threshold, color_range: Sequence[float]) -> str:
    """Panels (image | overlay | ground truth) of ``gallery_picks`` for one category into
    ``folder``, described in ``gallery.json``; returns its path."""
    scores = metrics.image_scores(maps)
    entries = []
    for group, indices in gallery_picks(data.test_labels, scores).items():
        for rank, i in enumerate(indices):
            name = f"{group.replace(' ', '_')}_{rank}.png"
            verdict = "" if threshold is None else (" ≥ " if scores[i] >= threshold else " < ") + f"{threshold:.4g}"
            visualize.save_panel(os.path.join(folder, name), data.test[i], maps[i], data.test_masks[i],
                                 color_range[0], color_range[1], f"{data.test_defects[i]}  score {scores[i]:.4g}{verdict}")
            entries.append({"group": group, "panel": name, "file": data.test_paths[i],
                            "defect": data.test_defects[i], "score": float(scores[i])})
    path = os.path.join(folder, GALLERY_FILE)
    files.write_text(path, json.dumps({"threshold": threshold, "images": entries}, indent=1))
    return path


def _png(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def _text(value) -> str:
    return html.escape(str(value))


def _cell(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _results_table(per_category: Dict[str, dict], mean: Dict[str, float]) -> str:
    keys = tables.table_keys(per_category)
    results = list(per_category.values())
    head = "".join(f"<th>{_text(tables.title(k, results))}</th>" for k in keys)
    rows = [f"<tr><td>{_text(name)}</td>" + "".join(f"<td>{_cell(r.get(k))}</td>" for k in keys) + "</tr>"
            for name, r in per_category.items()]
    rows.append("<tr class='mean'><td>mean</td>" + "".join(f"<td>{_cell(mean.get(k))}</td>" for k in keys) + "</tr>")
    defects = [(n, d, v) for n, r in per_category.items() for d, v in r.get("image_auroc_per_defect", {}).items()]
    notes = [line for name, r in per_category.items() for line in tables.unavailable_lines(name, r)]
    parts = [f"<table><tr><th>category</th>{head}</tr>{''.join(rows)}</table>",
             "<p class='small'>Values in %; the mean is over the categories where a metric is defined.</p>"]
    if notes:
        parts.append("<p>Undefined metrics:</p><ul>" + "".join(f"<li>{_text(n)}</li>" for n in notes) + "</ul>")
    if defects:
        parts.append("<h3>Image AUROC per defect type (good test images vs that type)</h3><table>"
                     "<tr><th>category</th><th>defect</th><th>image AUROC</th></tr>"
                     + "".join(f"<tr><td>{_text(n)}</td><td>{_text(d)}</td><td>{_cell(v)}</td></tr>"
                               for n, d, v in defects) + "</table>")
    return "\n".join(parts)


def _category_section(workdir: str, name: str, result: dict) -> str:
    parts = [f"<h2 id='{_text(name)}'>{_text(name)}</h2>"]
    thresholds = result.get("thresholds", {})
    if thresholds:
        threshold = thresholds.get("image_threshold")
        shown = "none" if threshold is None else f"{threshold:.4g}"
        parts.append(f"<p class='small'>Image threshold {shown} "
                     f"({_text(thresholds.get('image_rule'))}); evaluated at {_text(result.get('evaluated_at', '?'))}.</p>")
    plot = os.path.join(workdir, "plots", f"{name}.png")
    if os.path.isfile(plot):
        parts.append(f"<img class='plot' alt='ROC and PRO curves of {_text(name)}' src='{_png(plot)}'>")
    gallery_path = os.path.join(workdir, "report", name, GALLERY_FILE)
    if os.path.isfile(gallery_path):
        with open(gallery_path) as f:
            gallery = json.load(f)
        for group, caption in GROUPS:
            images = [e for e in gallery["images"] if e["group"] == group]
            if not images:
                continue
            parts.append(f"<h3>{_text(caption)}</h3><div class='gallery'>")
            for e in images:
                panel = os.path.join(os.path.dirname(gallery_path), e["panel"])
                parts.append(f"<figure><img alt='{_text(e['file'])}' src='{_png(panel)}'><figcaption>"
                             f"{_text(e['defect'])} · {_text(os.path.basename(e['file']))} · score "
                             f"{e['score']:.4g}</figcaption></figure>")
            parts.append("</div>")
    return "\n".join(parts)


def _teacher_record(results: dict) -> str:
    teacher = results.get("teacher")
    lines = [f"<p>Teacher: <code>{_text(teacher)}</code> (sha256 {_text(results.get('teacher_sha256'))})</p>"]
    record = os.path.splitext(str(teacher))[0] + ".json" if teacher else None
    if record and os.path.isfile(record):
        with open(record) as f:
            lines.append(f"<p>Its record (<code>{_text(record)}</code>):</p><pre>{_text(json.dumps(json.load(f), indent=1))}</pre>")
    lines.append(f"<p>Model: <code>{_text(json.dumps(results.get('model', {})))}</code></p>")
    return "\n".join(lines)


_PAGE_CHECK = """<script>
window.kdadErrors = [];
window.addEventListener('error', function (e) {  // script errors; a picture's failure is counted below
  if (e instanceof ErrorEvent) { window.kdadErrors.push(String(e.message)); }
}, true);
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  var check = document.getElementById('page-check');
  check.setAttribute('data-images', String(images.length));
  check.setAttribute('data-broken', String(broken.length));
  check.setAttribute('data-errors', String(window.kdadErrors.length));
  check.textContent = 'Page check: ' + images.length + ' pictures, ' + broken.length + ' missing, ' +
      window.kdadErrors.length + ' script errors.';
});
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
td { text-align: right; } td:first-child { text-align: left; } tr.mean td { font-weight: bold; }
.small { color: #555; font-size: 0.9em; } img.plot { width: 100%; max-width: 1100px; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; } figure { margin: 0; max-width: 380px; }
figure img { width: 100%; } figcaption { font-size: 0.85em; color: #444; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
</style>"""


def write_report(workdir: str, results: dict, per_category: Dict[str, dict]) -> str:
    """``W/report.html`` from the run's results, plots, galleries and config; returns its path."""
    mean = tables.mean_over_categories(per_category)
    config_path = os.path.join(workdir, "config.json")
    config_text = open(config_path).read() if os.path.isfile(config_path) else "{}"
    title = f"{results.get('method', '?')} on {results.get('dataset', '?')} ({results.get('image_size', '?')}² images)"
    failed = results.get("failed")
    body = [f"<h1>{_text(title)}</h1>",
            f"<p class='small'>Work folder <code>{_text(os.path.abspath(workdir))}</code>; "
            f"{len(per_category)} categor{'y' if len(per_category) == 1 else 'ies'}; "
            f"{_text(results.get('train_steps'))} training steps; {_text(results.get('seconds'))} s.</p>"]
    if failed:
        body.append("<p><b>This run stopped early:</b> " + _text(json.dumps(failed)) + "</p>")
    body += ["<h2>Results</h2>", _results_table(per_category, mean),
             "<p>" + " · ".join(f"<a href='#{_text(n)}'>{_text(n)}</a>" for n in per_category) + "</p>"]
    body += [_category_section(workdir, name, result) for name, result in per_category.items()]
    body += ["<h2>Teacher</h2>", _teacher_record(results),
             "<h2>Config</h2>", f"<pre>{_text(config_text)}</pre>",
             "<h2>Environment</h2>", f"<pre>{_text(json.dumps(results.get('environment', {}), indent=1))}</pre>",
             "<p id='page-check' class='small'>Page check: not run (scripts off).</p>"]
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_text(title)}</title>{_STYLE}{_PAGE_CHECK}</head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = os.path.join(workdir, REPORT_FILE)
    files.write_text(path, page)
    return path
