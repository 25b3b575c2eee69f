"""Tables of the documentation generated from the JSON the runs write, so a figure cannot drift
from its run.

    # keep what a run measured (its results.json, and score_rules.py's JSON when there is one)
    python -m kdad_jax.report.docs_tables record NAME W/results.json [--rules RULES.json] \
        --command "python -m kdad_jax.main ..."
    # rewrite every generated table of README.md and docs/ from docs/results/*.json
    python -m kdad_jax.report.docs_tables [--check]

A record (``docs/results/NAME.json``) holds the command, the machine and package versions, and the
figures a table shows (overall and per category metrics, per-defect image AUROC, good maxima in
the frame, the seconds the run took, the image-score rules). A table is a block of a Markdown page
between ``<!-- table: ID -->`` and ``<!-- end table -->``; ``TABLES`` says its columns and rows.
``--check`` changes nothing and exits 1 naming each table that differs from its records (the
test suite runs it).
"""

import argparse
import glob
import json
import os
import re
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECORDS = os.path.join(PROJECT, "docs", "results")
PAGES = ("README.md", "docs/*.md")
BLOCK = re.compile(r"(<!-- table: (?P<id>[\w-]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)

Column = Tuple[str, str, Callable[[dict], str]]  # header, alignment ('l' | 'r'), cell of a record


def _fixed(digits: int, *path: str) -> Callable[[dict], str]:
    def cell(record: dict) -> str:
        value = record
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return "—" if value is None else f"{value:.{digits}f}"
    return cell


def _best_rule(record: dict) -> str:
    rules = {k: v for k, v in record["rules"]["image_auroc_by_rule"].items() if k != "max"}
    name = max(rules, key=rules.get)
    return f"{rules[name]:.3f} ({RULE_NAMES.get(name, name)})"


def _percent_in_frame(record: dict) -> str:
    return f"{100 * record['good_maxima']['fraction_in_border']:.0f} %"


def _with_defect(defect: str) -> Callable[[dict], str]:
    def cell(record: dict) -> str:
        image = f"{record['image_auroc']:.3f}"
        per_defect = record.get("image_auroc_per_defect") or {}
        return f"{image} ({defect} alone {per_defect[defect]:.3f})" if defect in per_defect else image
    return cell


RULE_NAMES = {"smoothed_max_2": "σ 2 smoothed max", "smoothed_max_4": "σ 4 smoothed max",
              "smoothed_max_8": "σ 8 smoothed max", "top_mean_0.1": "top 0.1 % mean",
              "top_mean_1": "top 1 % mean", "interior_max": "interior max"}

# id: (columns, rows as (first cell, record name))
TABLES: Dict[str, Tuple[Sequence[Column], Sequence[Tuple[str, str]]]] = {
    "tuning-stfpm": (
        [("tuning set", "l", None), ("image AUROC (max)", "r", _with_defect("misplaced")),
         ("best other rule", "r", _best_rule), ("pixel AUROC", "r", _fixed(3, "pixel_auroc")),
         ("good maxima in the frame", "r", _percent_in_frame)],
        [("screw (train_only), faint + missing", "tuning_screw_stfpm_cpu"),
         ("transistor, faint + missing + misplaced", "tuning_transistor_stfpm_cpu"),
         ("bottle, the default pasted defects", "tuning_bottle_stfpm_cpu")]),
}


def record_from_run(results: dict, rules: Optional[dict], command: str) -> dict:
    """What a table may show of one single-category run: its metrics, the command, the machine."""
    (category, figures), = results["per_category"].items()
    environment = results.get("environment", {})
    keep = ("image_auroc", "pixel_auroc", "au_pro", "image_f1_max", "pixel_f1_max",
            "image_auroc_per_defect", "good_maxima", "seconds")
    return {"command": command, "category": category, "method": results.get("method"),
            "machine": {"cpu": environment.get("cpu"), "cpu_count": environment.get("cpu_count"),
                        "platform": environment.get("platform")},
            "versions": environment.get("versions", {}),
            **{key: figures.get(key) for key in keep},
            "rules": None if rules is None else {"image_auroc_by_rule": rules["image_auroc_by_rule"]}}


def render(table_id: str, records: Dict[str, dict]) -> str:
    columns, rows = TABLES[table_id]
    lines = ["| " + " | ".join(header for header, _, _ in columns) + " |",
             "|" + "|".join("---:" if align == "r" else "---" for _, align, _ in columns) + "|"]
    for label, name in rows:
        if name not in records:
            raise SystemExit(f"docs_tables: table {table_id!r}: no record {name!r} in {RECORDS}")
        cells = [label] + [cell(records[name]) for _, _, cell in columns[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_records(folder: str = RECORDS) -> Dict[str, dict]:
    records = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path, encoding="utf-8") as f:
            records[os.path.splitext(os.path.basename(path))[0]] = json.load(f)
    return records


def regenerate(text: str, records: Dict[str, dict]) -> str:
    def replace(match):
        if match["id"] not in TABLES:
            raise SystemExit(f"docs_tables: unknown table {match['id']!r} (known: {', '.join(TABLES)})")
        return match.group(1) + render(match["id"], records) + match.group(4)
    return BLOCK.sub(replace, text)


def pages(project: str = PROJECT) -> List[str]:
    return sorted(p for pattern in PAGES for p in glob.glob(os.path.join(project, pattern)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action")
    keep = sub.add_parser("record", help="keep a run's figures as docs/results/NAME.json")
    keep.add_argument("name")
    keep.add_argument("results", help="the run's results.json")
    keep.add_argument("--rules", help="benchmarks/score_rules.py's JSON of the same run")
    keep.add_argument("--command", required=True, help="the command that made the run")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on a difference")
    parser.add_argument("--project", default=PROJECT, help="the checkout whose pages and records to use")
    args = parser.parse_args(argv)
    if args.action == "record":
        with open(args.results, encoding="utf-8") as f:
            results = json.load(f)
        rules = None
        if args.rules:
            with open(args.rules, encoding="utf-8") as f:
                rules = json.load(f)
        folder = os.path.join(args.project, "docs", "results")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{args.name}.json"), "w", encoding="utf-8") as f:
            json.dump(record_from_run(results, rules, args.command), f, indent=1, ensure_ascii=False)
            f.write("\n")
        return 0
    records, stale = load_records(os.path.join(args.project, "docs", "results")), []
    for page in pages(args.project):
        with open(page, encoding="utf-8") as f:
            text = f.read()
        fresh = regenerate(text, records)
        if fresh != text:
            stale.append(os.path.relpath(page, args.project))
            if not args.check:
                with open(page, "w", encoding="utf-8") as f:
                    f.write(fresh)
    if stale:
        print(("out of date: " if args.check else "rewrote: ") + ", ".join(stale))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
