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
