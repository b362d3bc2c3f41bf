"""A loopback TCP proxy that adds latency: a store "over a network", on one machine.

Every chunk read from either side is written to the other `delay` seconds
later, in order, so a request and its reply take `2 * delay` more: a round
trip of `--rtt` seconds. Run on its own (it prints the port it listens on,
then serves until killed) or through `started()`, which runs it in a child
process so that its work does not share the benchmark's GIL.

    python benchmarks/latency_proxy.py --target 127.0.0.1:5432 --rtt 0.002
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

_CHUNK = 1 << 16


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    """Copy `reader` to `writer`, each chunk `delay` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    due: deque[tuple[float, bytes]] = deque()
    arrived = asyncio.Event()
    done = False

    async def send() -> None:
        while True:
            while not due:
                if done:
                    writer.close()
                    return
                arrived.clear()
                await arrived.wait()
            at, chunk = due.popleft()
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while chunk := await reader.read(_CHUNK):
            due.append((loop.time() + delay, chunk))
            arrived.set()
    except ConnectionError:
        pass
    finally:
        done = True
        arrived.set()
        with contextlib.suppress(ConnectionError):
            await sender


async def _serve(host: str, port: int, delay: float) -> None:
    async def handle(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            _pipe(client_reader, server_writer, delay),
            _pipe(server_reader, client_writer, delay),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    listening = server.sockets[0].getsockname()[1]
    print(listening, flush=True)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def started(target: str, rtt: float) -> Iterator[int]:
    """Run the proxy to `target` (`host:port`) in a child process; yield its port."""
    child = subprocess.Popen(  # noqa: S603 - this very script
        [sys.executable, str(Path(__file__)), "--target", target, "--rtt", str(rtt)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None  # noqa: S101 - asked for above
        line = child.stdout.readline()
        if not line.strip().isdigit():
            msg = f"the latency proxy did not start: {line!r}"
            raise RuntimeError(msg)
        yield int(line)
    finally:
        child.kill()
        child.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument(
        "--rtt", type=float, default=0.002, help="seconds added per round trip"
    )
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    started_at = time.monotonic()
    try:
        asyncio.run(_serve(host, int(port), args.rtt / 2))
    except KeyboardInterrupt:
        print(f"served {time.monotonic() - started_at:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
