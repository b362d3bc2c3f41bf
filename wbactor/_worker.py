"""Flusher processes: a flusher in a worker process of its own.

With `Config.flusher_process=True`, each flusher generation is a
`ProcessFlusher`: it lives in the parent, where the flusher actor calls its
`flush` like any flusher's, and it runs the user's flusher in a worker
process started with the `spawn` method, out of the producers' GIL. The
worker makes the flusher by calling the pickled `flusher_factory`; each
batch travels to it pickled (protocol 5) over a `multiprocessing` pipe, and
the outcome comes back the same way: nothing, or the exception the flusher
raised (itself if it pickles, else a `RemoteError`), so that `classify` runs
in the parent on it.

A worker that dies raises `WorkerDiedError` from the `flush` waiting on it.
`kill()` (SIGKILL, then reap) may be called from any thread, also while a
`flush` waits: the supervisor does so when an attempt passes
`flush_timeout`, so that a killed attempt cannot write late. A worker exits
on its own when its pipe to the parent closes or the parent process dies,
also in the middle of a flush.

The conversation over the pipe, each message one `send_bytes` of a pickled
tuple:

```text
worker -> parent  (READY,) | (FAILED, error, loading)  once, at start-up
parent -> worker  (FLUSH, batch)                  -> (OK,) | (ERROR, error)
parent -> worker  (FLUSH_MANY, [pickled batch])   -> (DONE, written, error)
parent -> worker  (RESUME,)                       no reply
parent -> worker  (CLOSE,)                        the worker closes, exits
```

where `error` is `(pickled exception or None, type name, message)`.

A window (`FLUSH_MANY`) may be sent while the worker still writes the one
before it, so that the worker always has one queued (`submit`, `collect`).
Once a batch of a window fails, the worker skips every window after it,
answering `(DONE, 0, None)`, until the parent, which has collected them all,
sends `RESUME`: the batches behind a failure are never written before it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from wbactor._errors import (
    ConfigError,
    PartialFailure,
    RemoteError,
    WorkerDiedError,
)
from wbactor._flusher import as_flush_function
from wbactor._log import FLUSHING_FOR

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from wbactor._config import Config, FlusherLike

__all__ = [
    "ProcessFlusher",
    "Workers",
    "check_picklable",
    "new_flusher",
]

T = TypeVar("T")

PROTOCOL: Final = 5
"""The pickle protocol of everything sent to or from a worker."""

# Message tags: small ints pickle in one byte.
_READY, _FAILED, _FLUSH, _FLUSH_MANY, _CLOSE, _OK, _ERROR, _DONE, _RESUME = range(9)

_OK_REPLY: Final = pickle.dumps((_OK,), protocol=PROTOCOL)
"""A successful flush's reply, compared as bytes: no unpickling on success."""

_CLOSE_REQUEST: Final = pickle.dumps((_CLOSE,), protocol=PROTOCOL)
_RESUME_REQUEST: Final = pickle.dumps((_RESUME,), protocol=PROTOCOL)

_MOST_ERROR: Final = 16_384
"""Bytes a pickled exception may take in a reply, and characters its message:
while the parent sends a window, the worker's reply must fit the pipe's
buffer, or each would wait for the other to read."""

_REAP_WAIT: Final = 1.0
"""Seconds a `flush` that lost its worker waits for it to exit, to report the
exit code; a worker that closed its pipe but lives on is killed then."""

_KILL_WAIT: Final = 5.0
"""Seconds `kill()` waits for a SIGKILLed worker to be gone (at once, unless
it is stuck in the kernel)."""

_POLL: Final = 0.001
"""Seconds between two looks at a worker that is exiting."""

_SPAWN_HINT: Final = (
    "; a script that starts a queue with flusher_process=True must do so under "
    "`if __name__ == '__main__':`, as the spawn start method imports it again "
    "in the worker"
)

_ErrorPayload = tuple[bytes | None, str, str]
"""An exception on the wire: itself pickled (or None), its type name, its message."""


# ------------------------------------------------------------------ config


def check_picklable(value: object, what: str) -> None:
    """Check that `value` pickles, as what a worker process is sent must.

    Args:
        value: The object to pickle, such as `Config.flusher_factory`.
        what: Names it in the message, e.g. `"flusher_factory"`.

    Raises:
        ConfigError: `pickle.dumps(value, protocol=5)` failed. The message
            names `what`, the object that did not pickle (for a
            `functools.partial`, which of its parts) and the pickle error.
    """
    try:
        pickle.dumps(value, protocol=PROTOCOL)
    except Exception as error:
        culprit, cause = _culprit(value, error)
        msg = (
            f"{what} must pickle, as flusher_process=True sends it to a worker "
            f"process; {culprit} does not ({_describe(cause)}). Use a module-level "
            "function or class, or functools.partial of one with arguments that "
            "pickle: not a lambda, a local function, or an object holding a lock, "
            "a connection or an open file"
        )
        raise ConfigError(msg) from error


def _culprit(value: object, error: Exception) -> tuple[str, Exception]:
    """Name the part of `value` that does not pickle, and its own error."""
    if isinstance(value, functools.partial):
        parts: list[tuple[str, object]] = [("function", value.func)]
        parts += [(f"argument {i}", arg) for i, arg in enumerate(value.args)]
        parts += [(f"keyword {key!r}", arg) for key, arg in value.keywords.items()]
        for label, part in parts:
            try:
                pickle.dumps(part, protocol=PROTOCOL)
            except Exception as part_error:  # noqa: BLE001 - any failure names it
                inner, cause = _culprit(part, part_error)
                return f"{inner} (the functools.partial's {label})", cause
    return _name_object(value), error


def _name_object(value: object) -> str:
    """Name `value` without calling its `repr()` (user code, may raise)."""
    kind = type(value)
    qualname = getattr(value, "__qualname__", None)
    if isinstance(qualname, str) and callable(value):
        module = getattr(value, "__module__", None)
        where = f" of module {module}" if isinstance(module, str) else ""
        noun = "class" if isinstance(value, type) else "callable"
        return f"the {noun} {qualname!r}{where}"
    return f"a {kind.__module__}.{kind.__qualname__} object"


def _type_name(error: BaseException) -> str:
    kind = type(error)
    name = getattr(kind, "__qualname__", None)
    module = getattr(kind, "__module__", None)
    if not isinstance(name, str):
        return "Exception"
    if not isinstance(module, str) or module == "builtins":
        return name
    return f"{module}.{name}"


def _message(error: BaseException) -> str:
    """Return `str(error)`, or "" if it raises or returns no `str`."""
    try:
        text = str(error)
    except Exception:  # noqa: BLE001 - a hostile __str__: no message
        return ""
    return text if text.__class__ is str else ""


def _describe(error: BaseException) -> str:
    text = _message(error)
    name = getattr(type(error), "__name__", "Exception")
    return f"{name}: {text}" if text else str(name)


def new_flusher(config: Config[T]) -> FlusherLike[T]:
    """Call `config.flusher_factory`: in a worker process if `flusher_process`."""
    factory = config.flusher_factory
    assert factory is not None  # noqa: S101 - only called with a factory
    if config.flusher_process:
        return ProcessFlusher(factory, name=config.name)
    return factory()


# ------------------------------------------------------------------ parent


class ProcessFlusher(Generic[T]):
    """A flusher that runs in a worker process of its own; one worker generation.

    Made in the parent, it spawns the worker and waits until the worker has
    called `factory()`, so a factory that fails raises here (the start-up is
    not a flush attempt: no `flush_timeout` runs yet). `flush` sends each
    batch pickled and returns or raises as the worker's flusher did. A
    restart makes a new `ProcessFlusher`, and so a new worker with a new pid.

    `flush`, `flush_many`, `submit`, `collect` and `close` are called from
    one thread at a time
    (the flusher actor's); `kill` from any thread, at any time.

    Args:
        factory: Makes the flusher, in the worker. Must pickle.
        name: The queue's name, for the worker process's name and messages.

    Raises:
        ConfigError: `factory` does not pickle, or cannot be unpickled in the
            worker (it is defined where the worker cannot import it).
        WorkerDiedError: The worker died before it was ready.
        BaseException: What `factory()` raised in the worker (as a
            `RemoteError` if that does not pickle).
    """

    def __init__(self, factory: Callable[[], FlusherLike[T]], *, name: str) -> None:
        """Spawn the worker; return once it has made its flusher."""
        try:
            blob = pickle.dumps(factory, protocol=PROTOCOL)
        except Exception:
            # check_picklable raises ConfigError, saying which part and why.
            check_picklable(factory, "flusher_factory")
            raise
        self._name = name
        self._lock = threading.Lock()  # reaping: waitpid from one thread at a time
        self._closed = False  # close() or kill() was called: no more flushes
        self._killed = False  # kill() found it alive: a death on purpose
        self._out = 0  # windows sent and not collected yet
        self._resume = False  # a window failed: the worker skips until RESUME
        context = multiprocessing.get_context("spawn")
        conn, child_conn = context.Pipe(duplex=True)
        self._conn: Connection = conn
        process = context.Process(
            target=_serve,
            args=(child_conn, blob, name),
            name=f"wbactor-flusher[{name}]",
            daemon=True,
        )
        self._process: BaseProcess = process
        try:
            process.start()
        finally:
            # Only the worker may hold its end, or its death gives no EOF here.
            child_conn.close()
        self._pid: int = process.pid  # type: ignore[assignment]  # set by start()
        self._start_up()

    def _start_up(self) -> None:
        """Wait for the worker's first word: ready, or what went wrong."""
        try:
            reply = pickle.loads(self._conn.recv_bytes())  # noqa: S301 - our worker
        except (EOFError, OSError):
            died = self._death("before it was ready", hint=_SPAWN_HINT)
            self._discard()
            raise died from None
        except BaseException:
            self._discard()
            raise
        if reply[0] == _READY:
            return
        _, payload, loading = reply
        self.close(timeout=_REAP_WAIT)  # it exits by itself after reporting
        error = _decode(payload)
        if loading:
            msg = (
                f"flusher_factory could not be unpickled in the worker process: "
                f"{_describe(error)} (it must be importable there: defined at the "
                "top level of a module, not in an interactive session or `python -c`)"
            )
            raise ConfigError(msg) from error
        raise error

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self._pid

    def __repr__(self) -> str:
        """Say which queue's worker this is, and its pid."""
        return f"<ProcessFlusher queue={self._name!r} pid={self._pid}>"

    def flush(self, batch: list[T]) -> None:
        """Write `batch` in the worker; return when it is written.

        Raises:
            pickle.PicklingError: `batch` does not pickle; nothing was sent.
                The message names the item and its type.
            WorkerDiedError: The worker died (or was killed) before it
                answered: the batch may or may not have been written.
            BaseException: What the worker's flusher raised, itself if it
                pickles, else a `RemoteError` with its type name and message.
        """
        try:
            payload = pickle.dumps((_FLUSH, batch), protocol=PROTOCOL)
        except Exception as error:  # any failure to pickle
            raise _not_picklable(batch, error, "") from error
        reply = self._exchange(payload, "while flushing a batch")
        if reply == _OK_REPLY:
            return
        _, payload_ = pickle.loads(reply)  # noqa: S301 - our own worker's reply
        raise _decode(payload_)

    def flush_many(self, batches: list[list[T]]) -> tuple[int, BaseException | None]:
        """Write `batches` in the worker, in order, in one hand-off.

        The worker flushes them one after the other and stops at the first
        that fails. `submit` and `collect` in one call; no other window may
        be out.

        Returns:
            How many batches were written (the first ones, in order), and the
            error of the first that failed (None if none did). The batches
            after it were not tried.

        A batch that does not pickle stops the window there: the batches
        before it are sent and written, and its `pickle.PicklingError` (the
        message says which item) is returned as the failure of that batch.

        Raises:
            pickle.PicklingError: The first batch does not pickle; nothing
                was sent.
            WorkerDiedError: The worker died before it answered; count none
                of the batches as written (each may or may not have been).
        """
        if not batches:
            return 0, None
        blobs, unpicklable = _pickle_window(batches)
        self._send_window(blobs)
        written, error = self.collect()
        return written, error if error is not None else unpicklable

    def submit(self, batches: list[list[T]]) -> int:
        """Send `batches` (not empty) as one window, behind the windows still out.

        Returns at once, or as soon as the pipe has room: the worker writes
        the windows in the order sent; `collect` gets their outcomes, oldest
        first. After a window failed, every window out must be collected
        before the next is sent (they come back unwritten).

        Returns:
            How many of `batches` were sent: all but those from the first that
            does not pickle (which the next window then starts with).

        Raises:
            pickle.PicklingError: The first batch does not pickle; nothing
                was sent.
            WorkerDiedError: The worker is gone.
        """
        blobs, _ = _pickle_window(batches)
        self._send_window(blobs)
        return len(blobs)

    def collect(self) -> tuple[int, BaseException | None]:
        """Wait for the outcome of the oldest window out.

        Returns:
            How many of its batches were written (the first ones, in order),
            and the error of the first that failed (None if none did). A
            window sent after one that failed comes back as `(0, None)`.

        Raises:
            WorkerDiedError: The worker died (or was killed) before it
                answered; count none of the window as written.
        """
        if self._out <= 0:
            msg = "no window is out"
            raise RuntimeError(msg)
        self._out -= 1
        reply = self._receive(f"while flushing a window ({self._out} more out)")
        _, written, failed = pickle.loads(reply)  # noqa: S301 - our worker's reply
        if failed is None:
            return written, None
        self._resume = True  # the worker skips windows until told to resume
        return written, _decode(failed)

    def _send_window(self, blobs: list[bytes]) -> None:
        if self._resume:
            if self._out:
                msg = "collect every window out after a failure before sending one"
                raise RuntimeError(msg)
            self._send(_RESUME_REQUEST, "while resuming")
            self._resume = False
        payload = pickle.dumps((_FLUSH_MANY, blobs), protocol=PROTOCOL)
        self._send(payload, f"while sending {len(blobs)} batches")
        self._out += 1

    def _exchange(self, payload: bytes, doing: str) -> bytes:
        """Send a request; return the worker's reply."""
        self._send(payload, doing)
        return self._receive(doing)

    def _send(self, payload: bytes, doing: str) -> None:
        if self._closed:
            raise self._death(doing)
        try:
            self._conn.send_bytes(payload)
        except (EOFError, OSError):
            raise self._death(doing) from None
        except BaseException:
            # Cut off mid-message: the worker is of no use any more.
            self._discard()
            raise

    def _receive(self, doing: str) -> bytes:
        if self._closed:
            raise self._death(doing)
        try:
            return self._conn.recv_bytes()
        except (EOFError, OSError):
            raise self._death(doing) from None
        except BaseException:
            # Cut off mid-conversation: the next reply would answer this
            # request, so the worker is of no use any more.
            self._discard()
            raise

    def _death(self, doing: str, hint: str = "") -> WorkerDiedError:
        """Reap the worker that stopped answering; say how it ended."""
        code = self._wait_exit(_REAP_WAIT)
        if code is None:
            self.kill()  # closed its pipe but lives on: of no use any more
            code = self._exitcode()
        pid = self._pid
        if self._killed:
            how = "was killed (by kill(): past flush_timeout, or at stop)"
        elif code is None:
            how = "is gone"
        elif code < 0:
            how = f"was killed by signal {_signal_name(-code)}"
            if -code == signal.SIGKILL:
                how += " (kill -9, or the out-of-memory killer)"
        else:
            how = f"exited with code {code}"
            if code == 0 and self._closed:
                how = "was closed"
        msg = f"the flusher worker process of queue {self._name!r} (pid {pid}) {how}"
        return WorkerDiedError(f"{msg} {doing}{hint if code else ''}", code)

    def _wait_exit(self, timeout: float, *, sentinel: bool = True) -> int | None:
        """Wait up to `timeout` for the worker to exit; reap it; its exit code.

        Waits on the process's sentinel (ready once the worker has closed its
        files, as it does when it exits), then polls for the exit status,
        which the kernel posts a moment later. Never holds the lock while
        waiting, so that kill() is never held up.
        """
        deadline = time.monotonic() + timeout
        if sentinel:
            multiprocessing.connection.wait([self._process.sentinel], timeout)
        while True:
            with self._lock:
                code = self._process.exitcode  # waitpid(WNOHANG): reaps it
                if code is not None:
                    self._process.join(timeout=0)  # forgotten by multiprocessing
                    return code
            if time.monotonic() >= deadline:
                return None
            time.sleep(_POLL)

    def _exitcode(self) -> int | None:
        with self._lock:
            return self._process.exitcode

    def _discard(self) -> None:
        """Kill the worker and close the pipe: after a failed start-up."""
        self.kill()
        self._conn.close()

    def kill(self) -> None:
        """Kill the worker (SIGKILL) and reap it. Idempotent; from any thread.

        A `flush` waiting for this worker then raises `WorkerDiedError`. What
        the worker was writing is cut short, save a commit already on its way
        to the store.
        """
        self._closed = True
        with self._lock:
            process = self._process
            if process.exitcode is None:
                self._killed = True
                process.kill()
        # Not on the sentinel: a process the flusher forked may hold it open.
        self._wait_exit(_KILL_WAIT, sentinel=False)

    def close(self, timeout: float = 5.0) -> None:
        """Close the flusher in the worker, and the worker; kill it at `timeout`.

        The worker calls its flusher's `close()` (if it has one) and exits;
        one that has not exited within `timeout` seconds is killed. Never
        raises, idempotent; afterwards no process is left (it is reaped).
        Errors of the flusher's `close()` in the worker are not reported.
        """
        first = not self._closed
        self._closed = True
        try:
            if first and self._exitcode() is None:
                self._conn.send_bytes(_CLOSE_REQUEST)
                self._wait_exit(timeout)
        except Exception:  # noqa: BLE001, S110 - never raises; killed below
            pass
        finally:
            self.kill()
            self._conn.close()


def _pickle_window(
    batches: list[list[Any]],
) -> tuple[list[bytes], pickle.PicklingError | None]:
    """Pickle `batches` up to the first that does not; return them, and its error.

    Raises:
        pickle.PicklingError: The first batch does not pickle.
    """
    blobs: list[bytes] = []
    for index, batch in enumerate(batches):
        try:
            blobs.append(pickle.dumps(batch, protocol=PROTOCOL))
        except Exception as error:
            unpicklable = _not_picklable(batch, error, f"batch {index}, ")
            unpicklable.__cause__ = error
            if not blobs:
                raise unpicklable from error
            return blobs, unpicklable
    return blobs, None


def _not_picklable(
    batch: list[Any], error: Exception, which: str
) -> pickle.PicklingError:
    """Return the `PicklingError` for a batch that does not pickle, naming the item."""
    what = "the batch"
    for index, item in enumerate(batch):
        try:
            pickle.dumps(item, protocol=PROTOCOL)
        except Exception as item_error:  # noqa: BLE001 - the first that fails
            kind = type(item)
            what = f"item {index} (a {kind.__module__}.{kind.__qualname__})"
            error = item_error
            break
    msg = (
        f"{which}{what} does not pickle, so it cannot be sent to the flusher's "
        f"worker process: {_describe(error)}"
    )
    return pickle.PicklingError(msg)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _decode(payload: _ErrorPayload) -> BaseException:
    """Return the worker's exception: itself if it unpickles, else a `RemoteError`."""
    blob, type_name, message = payload
    if blob is not None:
        try:
            error = pickle.loads(blob)  # noqa: S301 - our own worker's exception
        except Exception:  # noqa: BLE001, S110 - not importable here: RemoteError
            pass
        else:
            if isinstance(error, BaseException):
                return error
    return RemoteError(type_name, message)


class Workers:
    """The workers one supervisor started: the current one, and all still alive.

    The supervisor kills the current worker when its attempt is given up on
    (past `flush_timeout`, or at a stop that ran out of time), and, when it
    stops, every worker whose `close()` has not finished by then.
    """

    def __init__(self) -> None:
        """Track no worker yet."""
        self._current: ProcessFlusher[Any] | None = None
        self._all: weakref.WeakSet[ProcessFlusher[Any]] = weakref.WeakSet()

    def track(self, flusher: object) -> None:
        """Note the flusher of the new flusher actor (a worker or not)."""
        self._current = flusher if isinstance(flusher, ProcessFlusher) else None
        if self._current is not None:
            self._all.add(self._current)

    def retire(self, *, hung: bool) -> bool:
        """The current flusher actor is retired; kill its worker if it `hung`.

        Returns:
            Whether the flusher actor still hangs: a killed worker makes its
            `flush` raise, so its actor stops at once.
        """
        current, self._current = self._current, None
        if hung and current is not None:
            current.kill()
            return False
        return hung

    def kill_all(self) -> None:
        """Kill every worker still alive: its `close()` ran past the stop's deadline."""
        for worker in list(self._all):
            worker.kill()


# ------------------------------------------------------------------ worker


def _serve(conn: Connection, factory_blob: bytes, name: str) -> None:
    """Run in the worker: make the flusher, then flush what the parent sends."""
    FLUSHING_FOR.set(name)  # what the flusher logs names the queue
    # Ctrl-C reaches the whole process group; the parent decides when this
    # worker stops (close() or kill()), so that a drain can still use it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    with contextlib.suppress(EOFError, OSError):  # the parent is gone: exit
        _converse(conn, factory_blob)


def _converse(conn: Connection, factory_blob: bytes) -> None:
    try:
        factory = pickle.loads(factory_blob)  # noqa: S301 - from our parent
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        conn.send_bytes(_reply((_FAILED, _encode(error), True)))
        return
    try:
        flusher = factory()
        flush = as_flush_function(flusher)
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        conn.send_bytes(_reply((_FAILED, _encode(error), False)))
        return
    conn.send_bytes(_reply((_READY,)))
    worker = _Worker(flush)
    while True:
        request = conn.recv_bytes()
        try:
            message = pickle.loads(request)  # noqa: S301 - from our parent
        except Exception as error:  # noqa: BLE001 - only a batch can fail so
            conn.send_bytes(_reply((_ERROR, _encode(_unpicklable(error)))))
            continue
        if message[0] == _CLOSE:
            worker.close(flusher)
            return
        reply = worker.handle(message)
        if reply is not None:
            conn.send_bytes(reply)


def _exit_with_parent() -> None:
    """Exit when the parent process dies, even in the middle of a flush.

    The main loop sees the pipe close when it waits for a request; this
    thread covers a worker busy in a flush or a factory when the parent is
    killed. The spawn start method gives the child a sentinel that becomes
    ready when the parent dies.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="wbactor-parent-watch", daemon=True).start()


class _Worker:
    """Runs the flusher on the requests, with an event loop for async ones."""

    def __init__(self, flush: Callable[[list[Any]], object]) -> None:
        self._flush = flush
        self._loop: asyncio.AbstractEventLoop | None = None  # for async flushers
        self._skipping = False  # a window failed: skip windows until RESUME

    def handle(self, message: tuple[Any, ...]) -> bytes | None:
        """Carry out a request; return the reply, if it has one."""
        if message[0] == _RESUME:
            self._skipping = False
            return None
        if message[0] == _FLUSH:
            try:
                self._run(message[1])
            except BaseException as error:  # noqa: BLE001 - reported to the parent
                return _reply((_ERROR, _encode(error)))
            return _OK_REPLY
        if self._skipping:  # sent before the parent knew of the failure
            return _reply((_DONE, 0, None))
        written = 0
        for blob in message[1]:
            try:
                self._run(_unpickle_batch(blob))
            except BaseException as error:  # noqa: BLE001 - reported to the parent
                self._skipping = True
                return _reply((_DONE, written, _encode(error)))
            written += 1
        return _reply((_DONE, written, None))

    def _run(self, batch: list[Any]) -> None:
        result = self._flush(batch)
        if inspect.isawaitable(result):
            self._await(result)

    def close(self, flusher: object) -> None:
        """Close the flusher: an async `close()` on the loop its flushes ran on."""
        try:
            close = getattr(flusher, "close", None)
            result = close() if callable(close) else None
            if inspect.isawaitable(result):
                self._await(result)
        except BaseException:  # noqa: BLE001, S110 - the worker exits anyway
            pass

    def _await(self, awaitable: Awaitable[object]) -> None:
        """Run an async flush on this worker's own event loop (one for its life)."""
        if self._loop is None:
            import asyncio  # noqa: PLC0415 - only for async flushers

            self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(_completed(awaitable))


async def _completed(awaitable: Awaitable[object]) -> object:
    return await awaitable


def _unpickle_batch(blob: bytes) -> list[Any]:
    """Unpickle one batch of a window; a batch that does not is a `PicklingError`."""
    try:
        batch: list[Any] = pickle.loads(blob)  # noqa: S301 - from our parent
    except Exception as error:
        raise _unpicklable(error) from error
    return batch


def _unpicklable(error: Exception) -> pickle.PicklingError:
    """A batch the worker cannot unpickle (an item's class is not importable here).

    A `PicklingError`, so that the queue treats it as a batch that does not
    pickle: PERMANENT, the culprits isolated.
    """
    msg = f"the batch cannot be unpickled in the worker process: {_describe(error)}"
    return pickle.PicklingError(msg)


def _reply(message: tuple[Any, ...]) -> bytes:
    return pickle.dumps(message, protocol=PROTOCOL)


def _encode(error: BaseException) -> _ErrorPayload:
    """Put an exception on the wire: pickled if it round-trips, always named."""
    type_name, message = _type_name(error), _message(error)[:_MOST_ERROR]
    blob = _round_trip(error)
    if blob is None and isinstance(error, PartialFailure):
        blob = _packed_partial(error)
    return blob, type_name, message


def _packed_partial(error: PartialFailure) -> bytes | None:
    """A `PartialFailure` too big for a reply, or whose error does not pickle.

    Its partial success is kept: the indices go as a bitmap (at most 8 kB:
    indices below 65,536), and an error that does not pickle, or is too
    big, as a `RemoteError` of its type and its first 1,024 characters (at
    most 4 kB), so that the whole stays within `_MOST_ERROR`.
    """
    inner = error.error
    pickled = _round_trip(inner)
    if pickled is None or len(pickled) > _MOST_ERROR // 4:
        inner = RemoteError(_type_name(inner), _message(inner)[:1024])
    failed = error.failed
    if failed and (min(failed) < 0 or max(failed) >= _MOST_ERROR * 4):
        # Negative (a flusher bug) or past what the bitmap holds: as it is.
        return _round_trip(PartialFailure(failed, inner))
    bits = bytearray((max(failed, default=0) >> 3) + 1)
    for index in failed:
        bits[index >> 3] |= 1 << (index & 7)
    return _round_trip(_PackedPartial(bytes(bits), inner))


class _PackedPartial:
    """Pickles as the `PartialFailure` it stands for (`_packed_partial`)."""

    def __init__(self, bits: bytes, error: BaseException) -> None:
        self.bits, self.error = bits, error

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpacked_partial, (self.bits, self.error))


def _unpacked_partial(bits: bytes, error: BaseException) -> PartialFailure:
    """The `PartialFailure` whose failed indices `bits` holds, in order."""
    failed = [
        8 * at + bit
        for at, byte in enumerate(bits)
        if byte
        for bit in range(8)
        if byte >> bit & 1
    ]
    return PartialFailure(failed, error)


def _round_trip(error: object) -> bytes | None:
    """Return `error` pickled, if it also unpickles (here: its class is importable)."""
    try:
        blob = pickle.dumps(error, protocol=PROTOCOL)
        pickle.loads(blob)  # noqa: S301 - our own bytes
    except BaseException:  # noqa: BLE001 - a hostile or unpicklable exception
        return None
    return blob if len(blob) <= _MOST_ERROR else None
