"""``python -m loadtest.workers``: one generator worker process, driven over stdin/stdout.

The parent (:class:`loadtest.engine.WorkerProcess`) writes ``{"spec": ...}``, waits for
``{"ready": true}``, writes ``{"go": start_ns}``, reads ``{"sent": {...}}``, writes
``{"expect": n | null}`` and reads ``{"result": ...}``. Stdout carries only those lines; logs go
to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import trio

from loadtest.engine import LineChannel, LocalRun, RoleSpec
from loadtest.limits import pace_full_collections
from loadtest.tokens import redact_in_logs

logger = logging.getLogger(__name__)


async def serve_worker(channel: LineChannel) -> None:
    """Run one :class:`RoleSpec` under the control of ``channel`` (see the module docstring).

    Raises ``RuntimeError`` if the parent breaks the protocol.
    """
    first = await channel.receive()
    if first is None or "spec" not in first:
        raise RuntimeError(f"expected a spec, got {first!r}")
    spec = RoleSpec(**first["spec"])
    redact_in_logs(spec.token)
    run = LocalRun(spec)
    async with trio.open_nursery() as nursery:
        await nursery.start(run.run)
        await channel.send({"ready": True})
        go = await channel.receive()
        if go is None or "go" not in go:
            raise RuntimeError(f"expected go, got {go!r}")
        run.begin(int(go["go"]))
        await run.producers_done.wait()
        await channel.send({"sent": {str(p): n for p, n in run.stats.sent_per_producer.items()}})
        expect = await channel.receive()
        if expect is None or "expect" not in expect:
            raise RuntimeError(f"expected expect, got {expect!r}")
        run.expect(expect["expect"])
    await channel.send({"result": run.stats.to_wire()})


async def _amain() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    async with stdin, stdout:
        await serve_worker(LineChannel(stdin, stdout))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; takes no arguments. Returns 0 on success, 1 on failure."""
    del argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    pace_full_collections()
    try:
        trio.run(_amain)
    except Exception:
        logger.exception("worker failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
