"""The README and the documentation site: short, every relative link resolves, no commit hashes
(git keeps history; a figure states its command and machine instead)."""

import os
import re

import pytest

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(PROJECT, "docs")
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")
HASH = re.compile(r"\bcommit [0-9a-f]{7,40}\b|\bat [0-9a-f]{7}\b")


def pages() -> list[str]:
    return [os.path.join(PROJECT, "README.md")] + sorted(
        os.path.join(DOCS, name) for name in os.listdir(DOCS) if name.endswith(".md"))


def relative_links(text: str) -> list[str]:
    return [target for target, _ in LINK.findall(text) if "://" not in target]


def test_readme_fits_on_a_screen():
    with open(os.path.join(PROJECT, "README.md"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) <= 150


@pytest.mark.parametrize("page", pages(), ids=os.path.basename)
def test_every_relative_link_names_a_file_that_exists(page):
    with open(page, encoding="utf-8") as f:
        targets = relative_links(f.read())
    missing = [t for t in targets if not os.path.exists(os.path.join(os.path.dirname(page), t))]
    assert not missing, missing


@pytest.mark.parametrize("page", pages(), ids=os.path.basename)
def test_no_commit_hashes(page):
    with open(page, encoding="utf-8") as f:
        assert not HASH.findall(f.read())


def test_link_reader_finds_a_broken_link():
    assert relative_links("see [Results](results.md#a) and [x](https://example.org/y.md)") == ["results.md"]


def test_every_docs_page_is_in_the_site_navigation():
    with open(os.path.join(PROJECT, "mkdocs.yml"), encoding="utf-8") as f:
        navigation = f.read()
    assert all(f": {os.path.basename(p)}" in navigation for p in pages()[1:])


def test_generated_tables_match_their_records():
    """Every `<!-- table: ID -->` block is what docs/results/*.json give (rerun
    `python -m kdad_jax.report.docs_tables` after recording a run)."""
    from kdad_jax.report import docs_tables
    assert docs_tables.main(["--check"]) == 0
    texts = "".join(open(p, encoding="utf-8").read() for p in docs_tables.pages())
    assert {m["id"] for m in docs_tables.BLOCK.finditer(texts)} == set(docs_tables.TABLES)


def test_check_names_a_stale_page_and_a_rewrite_fixes_it(tmp_path, capsys):
    import shutil
    from kdad_jax.report import docs_tables
    shutil.copytree(os.path.join(DOCS, "results"), tmp_path / "docs" / "results")
    page = tmp_path / "docs" / "page.md"
    page.write_text("<!-- table: tuning-stfpm -->\n| old |\n<!-- end table -->\n")
    (tmp_path / "README.md").write_text("no tables\n")
    assert docs_tables.main(["--check", "--project", str(tmp_path)]) == 1
    assert capsys.readouterr().out.strip() == "out of date: docs/page.md"
    assert docs_tables.main(["--project", str(tmp_path)]) == 0 and "| old |" not in page.read_text()
    assert docs_tables.main(["--check", "--project", str(tmp_path)]) == 0


def test_a_changed_record_changes_its_table():
    from kdad_jax.report import docs_tables
    records = docs_tables.load_records()
    page = "before\n<!-- table: tuning-stfpm -->\nstale\n<!-- end table -->\nafter\n"
    fresh = docs_tables.regenerate(page, records)
    assert fresh.startswith("before\n<!-- table: tuning-stfpm -->\n| tuning set |") and fresh.endswith("<!-- end table -->\nafter\n")
    assert "| bottle, the default pasted defects | 0.975 |" in fresh
    records["tuning_bottle_stfpm_cpu"] = {**records["tuning_bottle_stfpm_cpu"], "image_auroc": 0.5}
    assert "| bottle, the default pasted defects | 0.500 |" in docs_tables.regenerate(page, records)
    del records["tuning_bottle_stfpm_cpu"]
    with pytest.raises(SystemExit, match="no record 'tuning_bottle_stfpm_cpu'"):
        docs_tables.regenerate(page, records)


def test_a_record_keeps_a_runs_figures_command_and_machine():
    from kdad_jax.report import docs_tables
    results = {"method": "stfpm", "environment": {"cpu": "X", "cpu_count": 2, "platform": "cpu",
                                                  "versions": {"jax": "1"}},
               "per_category": {"bottle": {"image_auroc": 0.9, "pixel_auroc": 0.8, "au_pro": 0.7,
                                           "seconds": 12.0, "good_maxima": {"fraction_in_border": 0.1},
                                           "thresholds": {"image_threshold": 3.0}}}}
    record = docs_tables.record_from_run(results, {"image_auroc_by_rule": {"max": 0.9}}, "cmd")
    assert (record["command"], record["category"], record["machine"]["cpu"]) == ("cmd", "bottle", "X")
    assert (record["image_auroc"], record["seconds"], record["versions"]) == (0.9, 12.0, {"jax": "1"})
    assert "thresholds" not in record and record["rules"] == {"image_auroc_by_rule": {"max": 0.9}}
