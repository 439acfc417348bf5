"""Whatever a client sends, a relay worker holds little more than ``max_message_bytes`` for it.

A real relay process runs under each launcher, with the default limit (1 MiB) and compression
enabled, so that it negotiates permessage-deflate with the clients that offer it. Each attack
streams up to 300 MiB (or sends a deflate bomb) until the server closes: the close must be
1009, the worker's peak RSS (``VmHWM``, reset before each attack) must stay within a few MiB of
the limit, and a producer→consumer round trip must still work afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.helpers import RawWebSocket
from tests.processes import LAUNCHERS, start_relay_process

MiB = 1024 * 1024
LIMIT_BYTES = 1 * MiB  # max_message_bytes, the default
HEADROOM_BYTES = 4 * MiB  # what the worker may grow by beyond the limit: buffers, allocator
ATTACK_BYTES = 300 * MiB
CHUNK_BYTES = 64 * 1024
BOUNDED = {"connect_timeout": 10, "disconnect_timeout": 10}


def _mask(payload: bytes, key: bytes) -> bytes:
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


def _header(first: int, length: int) -> bytes:
    """A masked client frame header (mask key 0: the payload goes out as it is)."""
    if length < 126:
        return bytes([first, 0x80 | length]) + bytes(4)
    if length < 65536:
        return bytes([first, 0x80 | 126]) + length.to_bytes(2, "big") + bytes(4)
    return bytes([first, 0x80 | 127]) + length.to_bytes(8, "big") + bytes(4)


def one_huge_frame() -> Iterator[bytes]:
    """A binary frame declaring 300 MiB, then its payload, 64 KiB at a time."""
    yield _header(0x82, ATTACK_BYTES)
    chunk = bytes(CHUNK_BYTES)
    for _ in range(ATTACK_BYTES // CHUNK_BYTES):
        yield chunk


def many_fragments() -> Iterator[bytes]:
    """A 300 MiB binary message in 64 KiB fragments, each far under the limit."""
    payload = bytes(CHUNK_BYTES)
    yield _header(0x02, CHUNK_BYTES) + payload  # binary, not FIN
    continuation = _header(0x00, CHUNK_BYTES) + payload
    for _ in range(ATTACK_BYTES // CHUNK_BYTES - 1):
        yield continuation


def deflate_bomb() -> Iterator[bytes]:
    """About 200 KB of permessage-deflate data inflating to 200 MiB of zeros, in one frame."""
    compressor = zlib.compressobj(wbits=-15)
    block = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    # After a sync flush every back-reference points at zeros, so the block can repeat.
    payload = (block * 200)[:-4]  # permessage-deflate drops the final 00 00 ff ff
    key = os.urandom(4)
    yield bytes([0xC2, 0x80 | 127]) + len(payload).to_bytes(8, "big") + key + _mask(payload, key)


@dataclass(frozen=True)
class Attack:
    name: str
    path: str
    frames: Iterator[bytes]
    deflate: bool = False


def attacks() -> list[Attack]:
    return [
        Attack("frame to a producer", "/ws/producer/a", one_huge_frame()),
        Attack("frame to a consumer", "/ws/consumer/a", one_huge_frame()),
        Attack("frame to echo", "/ws/echo", one_huge_frame()),
        Attack("frame to echo, deflate on", "/ws/echo", one_huge_frame(), deflate=True),
        Attack("fragments to a producer", "/ws/producer/a", many_fragments()),
        Attack("fragments to a consumer", "/ws/consumer/a", many_fragments()),
        Attack("fragments to echo, deflate on", "/ws/echo", many_fragments(), deflate=True),
        Attack("deflate bomb to a producer", "/ws/producer/a", deflate_bomb(), deflate=True),
        Attack("deflate bomb to echo", "/ws/echo", deflate_bomb(), deflate=True),
    ]


def _worker(process: trio.Process, launcher: str) -> psutil.Process:
    """The process that serves connections (the ``hypercorn`` CLI forks a worker)."""
    main = psutil.Process(process.pid)
    if launcher == "serve":
        return main
    (worker,) = [p for p in main.children() if "spawn_main" in " ".join(p.cmdline())]
    return worker


def _reset_peak_rss(worker: psutil.Process) -> int:
    with open(f"/proc/{worker.pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
    return _peak_rss(worker)


def _peak_rss(worker: psutil.Process) -> int:
    with open(f"/proc/{worker.pid}/status") as status:
        match = re.search(r"VmHWM:\s+(\d+) kB", status.read())
    assert match is not None
    return int(match.group(1)) * 1024


async def _send_until_closed(port: int, attack: Attack) -> int | None:
    """Stream ``attack`` until the server closes; return its close code."""
    client = await RawWebSocket.connect(port, attack.path, 65536, deflate=attack.deflate)
    try:
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                try:
                    for data in attack.frames:
                        await client.send_raw(data)
                except OSError:
                    pass  # the server dropped the connection

            nursery.start_soon(send)
            code, _ = await client.wait_for_close()
            nursery.cancel_scope.cancel()
    finally:
        client.close()
    return code


async def _round_trip(port: int) -> None:
    url = f"ws://127.0.0.1:{port}"
    async with (
        open_websocket_url(url + "/ws/consumer/after", **BOUNDED) as consumer,
        open_websocket_url(url + "/ws/producer/after?ack=none", **BOUNDED) as producer,
    ):
        await producer.send_message("still serving")
        assert await consumer.get_message() == "still serving"


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
async def test_oversized_input_leaves_the_worker_rss_near_the_limit(launcher: str) -> None:
    """300 MiB frames, 300 MiB of fragments, deflate bombs: 1009, bounded peak RSS, serving."""
    relay = await start_relay_process(LAUNCHERS[launcher], {"TRIORELAY_COMPRESSION": "true"})
    process, port, output = relay.process, relay.port, relay.output
    assert process.stderr is not None
    try:
        async with trio.open_nursery() as nursery:

            async def drain_stderr() -> None:
                assert process.stderr is not None
                async for chunk in process.stderr:
                    output.extend(chunk)

            nursery.start_soon(drain_stderr)
            worker = _worker(process, launcher)
            await _round_trip(port)  # warm up
            baseline = worker.memory_info().rss / MiB
            growth: dict[str, float] = {}
            for attack in attacks():
                before = _reset_peak_rss(worker)
                with trio.fail_after(20):
                    code = await _send_until_closed(port, attack)
                growth[attack.name] = (_peak_rss(worker) - before) / MiB
                assert code == 1009, f"{attack.name}: closed with {code}"
                await _round_trip(port)
            nursery.cancel_scope.cancel()
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    report = ", ".join(f"{name}: +{mib:.1f}" for name, mib in growth.items())
    # Shown with -s: the figures the README quotes.
    print(f"{launcher}: RSS {baseline:.1f} MiB after warm-up; peak growth (MiB): {report}")  # noqa: T201
    limit = (LIMIT_BYTES + HEADROOM_BYTES) / MiB
    assert all(mib < limit for mib in growth.values()), f"over {limit} MiB: {report}"
    assert b"Traceback" not in output, output.decode()
