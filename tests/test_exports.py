from __future__ import annotations

import importlib.metadata
import inspect
import pathlib
import subprocess
import sys
import tomllib
import types
import typing
from typing import Any

import pytest

import wbactor
import wbactor.flushers
import wbactor.testing

SPEC_API = {
    "Config",
    "Policy",
    "DropReason",
    "Push",
    "PushMany",
    "Flush",
    "start",
    "WriteBehind",
    "Stats",
    "default_backoff",
    "Clock",
    "WriteBehindError",
    "ConfigError",
    "CapacityRequiredError",
    "FlusherRequiredError",
    "CoalesceNeedsKeyError",
    "QueueClosedError",
    "PushTimeoutError",
}

TESTING_API = {
    "ManualClock",
    "RecordingFlusher",
    "FlakyFlusher",
    "GatedFlusher",
    "DropRecorder",
}

MODULES = [wbactor, wbactor.testing, wbactor.flushers]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_is_sorted_without_duplicates(module: types.ModuleType) -> None:
    names = list(module.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))
    assert all(isinstance(name, str) for name in names)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_exported_name_resolves(module: types.ModuleType) -> None:
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


def test_every_spec_name_is_exported() -> None:
    assert SPEC_API - set(wbactor.__all__) == set()


def test_testing_helpers_are_exported() -> None:
    assert set(wbactor.testing.__all__) == TESTING_API


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, Any] = {}
    exec("from wbactor import *", namespace)  # noqa: S102
    namespace.pop("__builtins__")
    assert set(namespace) == set(wbactor.__all__)


def defining_module(obj: object) -> str:
    """The module an exported object was defined in.

    A type alias (`FlusherLike`, a `typing` union) has no module of its own:
    it is attributed to the wbactor module defining its members.
    """
    if isinstance(obj, type) or inspect.isfunction(obj):
        return obj.__module__
    origin = typing.get_origin(obj)
    assert origin in {typing.Union, types.UnionType}, f"unexpected export {obj!r}"
    modules = {
        defining_module(typing.get_origin(arg) or arg) for arg in typing.get_args(obj)
    }
    return min(m for m in modules if m.startswith("wbactor"))


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_export_is_defined_in_wbactor(module: types.ModuleType) -> None:
    for name in module.__all__:
        where = defining_module(getattr(module, name))
        assert where == "wbactor" or where.startswith("wbactor."), (name, where)


def test_testing_helpers_are_defined_in_wbactor_testing() -> None:
    for name in wbactor.testing.__all__:
        assert getattr(wbactor.testing, name).__module__ == "wbactor.testing"


def test_importing_wbactor_does_not_configure_structlog() -> None:
    code = (
        "import structlog\n"
        "import wbactor, wbactor.testing\n"
        "print(structlog.is_configured())\n"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.strip() == "False"


# -- __version__ ------------------------------------------------------------


def test_version_is_the_installed_package_version() -> None:
    assert isinstance(wbactor.__version__, str)
    assert wbactor.__version__ == importlib.metadata.version("wbactor")


def test_version_matches_pyproject() -> None:
    pyproject = pathlib.Path(__file__).parent.parent / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("no pyproject.toml next to the tests")
    with pyproject.open("rb") as file:
        assert wbactor.__version__ == tomllib.load(file)["project"]["version"]


def test_version_is_not_a_star_export() -> None:
    # A module attribute by convention, not an API name: `import *` skips it.
    assert "__version__" not in wbactor.__all__


def test_version_falls_back_when_the_package_is_not_installed() -> None:
    code = (
        "import importlib.metadata as m\n"
        "def missing(name):\n"
        "    raise m.PackageNotFoundError(name)\n"
        "m.version = missing\n"
        "import wbactor\n"
        "print(wbactor.__version__)\n"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.strip() == "0+unknown"


# -- Push and PushMany ------------------------------------------------------


def test_push_holds_its_item() -> None:
    item = {"id": 1}
    assert wbactor.Push(item).item is item


def test_push_many_holds_its_items() -> None:
    items = [1, 2, 3]
    assert wbactor.PushMany(items).items is items


def test_pushes_are_equal_by_item() -> None:
    assert wbactor.Push(1) == wbactor.Push(1)
    assert wbactor.Push([1, 2]) == wbactor.Push([1, 2])
    assert wbactor.Push(1) != wbactor.Push(2)
    assert wbactor.Push(1) != 1
    assert wbactor.Push(1) != wbactor.PushMany([1])
    assert wbactor.PushMany([1, 2]) == wbactor.PushMany([1, 2])
    assert wbactor.PushMany([1, 2]) != wbactor.PushMany([2, 1])
    assert wbactor.PushMany([1]) != [1]


def test_push_messages_are_unhashable_since_equal_by_value() -> None:
    with pytest.raises(TypeError):
        hash(wbactor.Push(1))
    with pytest.raises(TypeError):
        hash(wbactor.PushMany([1]))


def test_push_repr_shows_the_item() -> None:
    assert repr(wbactor.Push(1)) == "Push(1)"
    assert repr(wbactor.Push("a")) == "Push('a')"
    assert repr(wbactor.PushMany([1, 2])) == "PushMany([1, 2])"


def describe(message: object) -> str:
    match message:
        case wbactor.Push(item):
            return f"one {item!r}"
        case wbactor.PushMany([first, *rest]):
            return f"many from {first!r} plus {len(rest)}"
        case wbactor.Flush():
            return "flush"
        case _:
            return "other"


def test_push_messages_support_positional_match_patterns() -> None:
    assert describe(wbactor.Push(7)) == "one 7"
    assert describe(wbactor.Push(None)) == "one None"
    assert describe(wbactor.PushMany([1, 2, 3])) == "many from 1 plus 2"
    assert describe(wbactor.Flush()) == "flush"
    assert describe(7) == "other"


def test_push_match_binds_by_keyword_too() -> None:
    match wbactor.Push("x"):
        case wbactor.Push(item="x"):
            matched = True
        case _:
            matched = False
    assert matched
