"""The docs a newcomer reads: the reference covers the API, in a newcomer's order."""

from __future__ import annotations

import ast
import configparser
import importlib
import inspect
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


MODULES = ("wbactor.testing", "wbactor.flushers", "wbactor.metrics")


def test_the_reference_renders_every_export_once() -> None:
    rendered = directives()
    assert len(rendered) == len(set(rendered))
    exports = {f"wbactor.{name}" for name in wbactor.__all__}
    for module in MODULES:
        names = importlib.import_module(module).__all__
        exports |= {f"{module}.{name}" for name in names}
    assert exports - set(rendered) == set()


def test_the_reference_follows_the_order_a_newcomer_meets_things_in() -> None:
    rendered = directives()
    first = [
        "wbactor.start",
        "wbactor.Config",
        "wbactor.WriteBehind",
        "wbactor.QueueRef",
        "wbactor.Push",
        "wbactor.PushMany",
        "wbactor.Flush",
        "wbactor.FlushTick",
        "wbactor.Policy",
        "wbactor.DropReason",
        "wbactor.Stats",
    ]
    assert rendered[: len(first)] == first
    # The extra modules last, each introduced by its docstring, then its
    # objects: the flushers before their errors, instrument() before what it
    # returns.
    starts = [rendered.index(module) for module in MODULES]
    assert starts == sorted(starts)
    assert all(name.startswith(MODULES) for name in rendered[starts[0] :])
    for earlier, later in [
        ("wbactor.flushers.SQLiteFlusher", "wbactor.flushers.StoreError"),
        ("wbactor.flushers.StoreError", "wbactor.flushers.PermanentStoreError"),
        ("wbactor.metrics.instrument", "wbactor.metrics.Instrumentation"),
    ]:
        assert rendered.index(earlier) < rendered.index(later)


@pytest.mark.parametrize(
    "option",
    [
        "merge_init_into_class: true",  # class signatures show the constructor
        "show_labels: false",  # no "class-attribute instance-attribute" badges
        "overloads_only: true",  # upsert() shows its overloads, once
        "returns_multiple_items: false",  # a wrapped Returns line stays one row
    ],
)
def test_mkdocstrings_renders_the_reference_as_a_newcomer_reads_it(
    option: str,
) -> None:
    text = MKDOCS.read_text()
    assert re.search(rf"^\s+{re.escape(option)}$", text, re.MULTILINE)


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
    section = tox["tox"]
    # tox 4 reads either spelling; `tox -l` shows this list.
    listed = section.get("env_list", section.get("envlist", ""))
    default = {e.strip() for e in listed.split(",") if e.strip()}
    assert envs - default == set()
    # Every listed environment is in one of the labels, and no label names
    # one that does not exist.
    labelled: set[str] = set()
    for line in section["labels"].strip().splitlines():
        _, _, members = line.partition("=")
        labelled |= {e.strip() for e in members.split(",")}
    assert labelled == default


def test_every_example_runs_in_the_examples_tox_environment() -> None:
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    commands = tox["testenv:examples"]["commands"]
    for script in (ROOT / "examples").glob("*.py"):
        assert f"examples/{script.name}" in commands


def directive_options() -> dict[str, str]:
    """Each `::: name` of the reference with the option lines under it."""
    blocks = re.findall(
        r"^::: (\S+)\n((?:    .*\n)*)", REFERENCE.read_text(), re.MULTILINE
    )
    return dict(blocks)


def test_no_private_type_shows_in_a_class_signature() -> None:
    # A class's constructor joins its signature; one that takes wbactor's
    # internals (WriteBehind, QueueRef, Instrumentation: made for the user)
    # must keep it out of the page.
    for name, options in directive_options().items():
        module, _, attr = name.rpartition(".")
        obj = getattr(importlib.import_module(module), attr, None) if module else None
        if not isinstance(obj, type) or "__init__" not in vars(obj):
            continue
        annotations = inspect.signature(vars(obj)["__init__"]).parameters.values()
        private = [
            p.name
            for p in annotations
            if p.annotation is not p.empty and re.search(r"\b_\w", str(p.annotation))
        ]
        if private:
            assert "merge_init_into_class: false" in options, (name, private)


def test_the_home_page_leads_to_every_page() -> None:
    linked = set(
        re.findall(r"\]\(([\w-]+\.md)(?:#[\w-]+)?\)", (DOCS / "index.md").read_text())
    )
    pages = {p.name for p in DOCS.glob("*.md")} - {"index.md"}
    assert pages - linked == set()


def test_no_page_tells_a_newcomer_to_pip_install_an_unpublished_name() -> None:
    # wbactor is not on PyPI yet: the pages a newcomer starts from install it
    # from a checkout.
    for page in ("index.md", "quickstart.md"):
        assert not re.search(
            r"^pip install wbactor\b", (DOCS / page).read_text(), re.MULTILINE
        )


def test_every_relative_link_of_the_readme_and_changelog_exists() -> None:
    # mkdocs --strict checks the pages' links; nothing checks these two.
    for name in ("README.md", "CHANGELOG.md"):
        text = re.sub(r"`[^`]*`", "", (ROOT / name).read_text())
        for target in re.findall(r"\]\((?!https?:)([^)#\s]+)", text):
            assert (ROOT / target).exists(), (name, target)


def test_every_release_in_the_changelog_is_dated_and_the_version_has_one() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^]]+)\](.*)$", text, re.MULTILINE)
    assert headings[0] == ("Unreleased", "")
    for version, rest in headings[1:]:
        assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", rest), version
    released = [version for version, _ in headings[1:]]
    assert wbactor.__version__ in {*released, "0+unknown"}


def test_the_changelog_names_no_private_module_or_function() -> None:
    # A user reads it: `wbactor._config.check_wait_timeout` means nothing to
    # them (dunders such as `__eq__` are fine).
    text = (ROOT / "CHANGELOG.md").read_text()
    private = [
        span
        for span in re.findall(r"`([^`]+)`", text)
        if re.search(r"(?:^|[.\s(])_(?!_)\w", span)
    ]
    assert private == []


def test_docstrings_use_markdown_code_blocks_not_rest() -> None:
    # mkdocstrings renders Markdown: a reST "Example::" shows both colons and
    # an unhighlighted block. wbactor/flushers/ is left out for now: two of
    # its module docstrings still use it.
    for path in sorted((ROOT / "wbactor").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not re.search(r"\w::$", node.value, re.MULTILINE), path.name
