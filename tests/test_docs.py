"""The docs a newcomer reads: the reference covers the API, in a newcomer's order."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

import pytest

import wbactor
import wbactor.flushers
import wbactor.testing

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference.md"
MKDOCS = ROOT / "mkdocs.yml"

pytestmark = pytest.mark.skipif(
    not REFERENCE.is_file(), reason="the docs are not next to the tests"
)


def directives() -> list[str]:
    """The objects `docs/reference.md` renders, in order (`::: name` lines)."""
    return re.findall(r"^::: (\S+)$", REFERENCE.read_text(), re.MULTILINE)


def test_the_reference_opens_with_start_then_config_then_the_handle() -> None:
    assert directives()[:3] == [
        "wbactor.start",
        "wbactor.Config",
        "wbactor.WriteBehind",
    ]


def test_the_reference_renders_every_export_once() -> None:
    rendered = directives()
    assert len(rendered) == len(set(rendered))
    missing = {f"wbactor.{name}" for name in wbactor.__all__} - set(rendered)
    assert missing == set()
    for module in ("wbactor.testing", "wbactor.flushers", "wbactor.metrics"):
        assert module in rendered


def test_the_reference_ends_with_testing_flushers_and_metrics() -> None:
    assert directives()[-3:] == [
        "wbactor.testing",
        "wbactor.flushers",
        "wbactor.metrics",
    ]


def test_mkdocstrings_merges_init_into_the_class_signature() -> None:
    text = MKDOCS.read_text()
    assert re.search(r"^\s+merge_init_into_class: true$", text, re.MULTILINE)


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    text = MKDOCS.read_text()
    nav = set(re.findall(r"^  - [^:]+: (\S+\.md)$", text, re.MULTILINE))
    pages = {p.name for p in DOCS.glob("*.md")}
    assert nav == pages


def test_the_extra_stylesheet_exists() -> None:
    text = MKDOCS.read_text()
    for sheet in re.findall(r"^  - (stylesheets/\S+\.css)$", text, re.MULTILINE):
        assert (DOCS / sheet).is_file()


def test_the_quickstart_defines_no_class_named_like_the_librarys_own() -> None:
    tree = ast.parse((ROOT / "examples" / "quickstart.py").read_text())
    classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    library = (
        set(wbactor.__all__)
        | set(wbactor.flushers.__all__)
        | set(wbactor.testing.__all__)
    )
    assert classes
    assert classes & library == set()


def test_the_quickstart_page_has_prose_around_each_code_block() -> None:
    text = (DOCS / "quickstart.md").read_text()
    blocks = re.findall(r"^```python$", text, re.MULTILINE)
    paragraphs = [
        block
        for block in re.split(r"^```.*?^```$", text, flags=re.MULTILINE | re.DOTALL)
        if len(block.split()) >= 20  # a paragraph, not a heading
    ]
    assert len(blocks) >= 3
    assert len(paragraphs) > len(blocks)


def test_tox_lists_every_environment_by_default() -> None:
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    envs = {
        s.removeprefix("testenv:") for s in tox.sections() if s.startswith("testenv:")
    }
    default = {e.strip() for e in tox["tox"]["envlist"].split(",")}
    assert envs - default == set()


def test_every_example_runs_in_the_examples_tox_environment() -> None:
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    commands = tox["testenv:examples"]["commands"]
    for script in (ROOT / "examples").glob("*.py"):
        assert f"examples/{script.name}" in commands
