"""Shared fixtures: a manual clock, and a check that no actor or thread leaks."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pykka
import pytest

from wbactor.testing import ManualClock

if TYPE_CHECKING:
    from collections.abc import Iterator

_ACTOR_THREADS = (
    "QueueActor",
    "TimerActor",
    "SupervisorActor",
    "FlusherActor",
    "wbactor-journal",
)


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test advances it."""
    return ManualClock()


@pytest.fixture(autouse=True)
def _no_leaked_actors() -> Iterator[None]:
    """Fail a test that leaves a wbactor actor or thread alive."""
    yield
    leaked = pykka.ActorRegistry.get_all()
    pykka.ActorRegistry.stop_all(timeout=5)
    alive = []
    for thread in threading.enumerate():
        if thread.name.startswith(_ACTOR_THREADS):
            thread.join(timeout=5)
            if thread.is_alive():
                alive.append(thread.name)
    assert not leaked, f"actors left running: {leaked}"
    assert not alive, f"actor threads still alive: {alive}"
