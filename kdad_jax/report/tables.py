"""The results a run leaves for people: the console table, ``results.md`` / ``results.csv``
(one row per category and the mean, as papers print them) and ROC / PRO curve plots per category.
"""

import csv
import os
from typing import Dict, List, Optional

import numpy as np

from kdad_jax import files
from kdad_jax.evaluation import metrics
from kdad_jax.report import escape
from kdad_jax.evaluation.metrics import METRIC_KEYS

# LOCO's two anomaly types: AU-sPRO at FPR ≤ 0.05 (its paper's headline) and image AUROC
# and MVTec AD 2's SegF1
EXTRA_KEYS = ("au_spro_logical", "au_spro_structural", "image_auroc_logical", "image_auroc_structural",
              "seg_f1")
TITLES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "au_pro": "AU-PRO (FPR≤0.3)",
          "image_f1_max": "image F1-max", "pixel_f1_max": "pixel F1-max",
          "image_auroc_logical": "image AUROC logical", "image_auroc_structural": "image AUROC structural",
          "au_spro_logical": "AU-sPRO logical (FPR≤0.05)", "au_spro_structural": "AU-sPRO structural (FPR≤0.05)",
          "seg_f1": "SegF1"}

PLOT_POINTS = 2000  # curves are thinned to this many points for drawing (the metrics use all)


def au_pro_limit(results) -> str:
    """The FPR limit ``au_pro`` was integrated to (``eval.fpr_limits[0]``), from result dicts."""
    for result in results:
        if result.get("au_pro_at"):
            return next(iter(result["au_pro_at"]))
    return "0.3"


def title(key: str, results) -> str:
    if key == "au_pro":
        return f"AU-PRO (FPR≤{au_pro_limit(results)})"
    return TITLES.get(key, key)


def table_keys(per_category: Dict[str, dict]) -> List[str]:
    """The metric columns: the standard five, plus LOCO's per-type AU-sPRO and AUROC where present."""
    return list(METRIC_KEYS) + [k for k in EXTRA_KEYS if any(k in r for r in per_category.values())]


def mean_over_categories(per_category: Dict[str, dict]) -> Dict[str, Optional[float]]:
    """Per metric, the mean over the categories where it is defined (None where none is)."""
    mean = {}
    for key in table_keys(per_category):
        values = [r[key] for r in per_category.values() if r.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
    return mean


def _rows(per_category, mean):
    keys = table_keys(per_category)
    rows = [[name, *(r.get(k) for k in keys)] for name, r in per_category.items()]
    return keys, rows + [["mean", *(mean.get(k) for k in keys)]]


def format_table(per_category: Dict[str, dict], mean: Dict[str, float]) -> str:
    """Plain-text table for the console (fractions, '-' where undefined)."""
    keys, rows = _rows(per_category, mean)
    cells = [["category", *keys]] + [[row[0]] + ["-" if v is None else f"{v:.4f}" for v in row[1:]]
                                     for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def unavailable_lines(name: str, result: dict) -> List[str]:
    """'NAME: image AUROC, image F1-max undefined: no anomalous test images', one per reason."""
    by_reason = {}
    for key, reason in result.get("unavailable", {}).items():
        by_reason.setdefault(reason, []).append(TITLES.get(key, key))
    return [f"{name}: {', '.join(keys)} undefined: {reason}" for reason, keys in by_reason.items()]


def _notes(per_category) -> List[str]:
    return [f"- {escape.markdown(line)}" for name, r in per_category.items()
            for line in unavailable_lines(name, r)]


def markdown(per_category: Dict[str, dict], mean: Dict[str, float], heading: str) -> str:
    """Percentages with one decimal, as in papers; '–' where a metric is undefined (see notes)."""
    keys, rows = _rows(per_category, mean)
    results = list(per_category.values())
    lines = [f"# {escape.markdown(heading)}", "", "| category | " + " | ".join(title(k, results) for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for row in rows:
        name = "**mean**" if row is rows[-1] else escape.markdown(row[0])
        lines.append(f"| {name} | " + " | ".join("–" if v is None else f"{100 * v:.1f}"
                                                 for v in row[1:]) + " |")
    lines += ["", "Values in %; the mean is over the categories where a metric is defined."]
    notes = _notes(per_category)
    if notes:
        lines += ["", "Undefined metrics:", *notes]
    defect_rows = [(name, defect, value) for name, r in per_category.items()
                   for defect, value in r.get("image_auroc_per_defect", {}).items()]
    if defect_rows:
        lines += ["", "## Image AUROC per defect type (good test images vs that type)", "",
                  "| category | defect | image AUROC |", "|---|---|---:|"]
        lines += [f"| {escape.markdown(n)} | {escape.markdown(d)} | "
                  f"{'–' if v is None else f'{100 * v:.1f}'} |" for n, d, v in defect_rows]
    return "\n".join(lines) + "\n"


def write_tables(workdir: str, per_category: Dict[str, dict], mean: Dict[str, float],
                 title: str) -> List[str]:
    """``W/results.md`` and ``W/results.csv`` (fractions, empty where undefined)."""
    keys, rows = _rows(per_category, mean)
    md_path, csv_path = os.path.join(workdir, "results.md"), os.path.join(workdir, "results.csv")
    files.write_text(md_path, markdown(per_category, mean, title))
    with files.replacing(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["category", *keys])
        writer.writerows([[escape.csv_cell(row[0]), *("" if v is None else f"{v:.6f}" for v in row[1:])]
                          for row in rows])
    return [md_path, csv_path]


def _thin(x: np.ndarray, y: np.ndarray):
    if len(x) <= PLOT_POINTS:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, PLOT_POINTS).round().astype(int))
    return x[keep], y[keep]


def plot_curves(path: str, name: str, maps: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                result: dict) -> str:
    """One PNG: image ROC, pixel ROC and the PRO curve up to FPR 0.3 (an undefined one says why)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    unavailable = result.get("unavailable", {})
    scores = metrics.image_scores(maps)
    panels = [("image ROC", "image_auroc", lambda: metrics.roc_curve(scores, labels), 1.0),
              ("pixel ROC", "pixel_auroc", lambda: metrics.roc_curve(maps, masks), 1.0),
              ("PRO", "au_pro", lambda: metrics.pro_curve(maps, masks), float(au_pro_limit([result])))]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4), constrained_layout=True)
    for axis, (panel_title, key, curve, fpr_limit) in zip(axes, panels):
        axis.set(xlim=(0, fpr_limit), ylim=(0, 1.01), xlabel="false positive rate",
                 ylabel="PRO" if key == "au_pro" else "true positive rate")
        if key in unavailable or result.get(key) is None:
            axis.set_title(f"{panel_title}: undefined")
            axis.text(0.5 * fpr_limit, 0.5, unavailable.get(key, "undefined"), ha="center",
                      va="center", wrap=True, fontsize=9)
            continue
        fpr, tpr = _thin(*curve())
        axis.plot(fpr, tpr, lw=1.5)
        if key != "au_pro":
            axis.plot([0, 1], [0, 1], ls=":", c="gray", lw=1)
        axis.set_title(f"{title(key, [result])} = {result[key]:.4f}")
        axis.grid(alpha=0.3)
    figure.suptitle(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with files.replacing(path, "wb") as f:
        figure.savefig(f, dpi=100, format="png")
    plt.close(figure)
    return path
