"""isolate_connection_errors: a connection's failure ends at its task group, nothing else does.

The whole-server case (an upgrade request with a frame in the same write, hypercorn#225) is
``tests/test_hostile_input.py``; these check the group itself and the structure it relies on.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import textwrap
from collections.abc import Callable

import pytest
import trio
import trio.testing
from hypercorn.trio import run as run_module
from hypercorn.trio import tcp_server as tcp_server_module
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer

from triorelay.compat import hypercorn as compat
from triorelay.compat.hypercorn import isolation
from triorelay.compat.hypercorn.app_queue import AppTaskGroup
from triorelay.compat.hypercorn.isolation import IsolatedTaskGroup
from triorelay.compat.hypercorn.reads import ReadLoop

pytestmark = pytest.mark.timeout(10)


#: sha256 of Hypercorn 0.18.0's ``TCPServer.run`` and ``TCPServer._close``, dedented: what
#: may raise outside the task group (the TLS handshake, the socket's addresses, the close) is
#: caught there, so a change to either needs a new look at isolation.py.
RUN_SHA256 = "30e3a0c602fd1a3e61151b45597ff83639f5473ef52032b21950d85e088cba7e"
CLOSE_SHA256 = "544a46e0eb9f7c163a0f7d3088d68d19bafdfaec46f9de1f920069c62f00536f"


def _digest(function: Callable[..., object]) -> str:
    return hashlib.sha256(textwrap.dedent(inspect.getsource(function)).encode()).hexdigest()


def test_a_connections_work_all_runs_in_its_task_group() -> None:
    """The assumption: ``TCPServer.run`` reads (``_read_data``) inside ``async with
    TaskGroup()``, the group its app's task runs in, and closes the connection after it."""
    assert _digest(TCPServer.run) == RUN_SHA256, "TCPServer.run changed: review isolation.py"
    assert _digest(TCPServer._close) == CLOSE_SHA256, "TCPServer._close changed: review it"
    lines = inspect.getsource(TCPServer.run).splitlines()
    block = next(i for i, line in enumerate(lines) if "async with TaskGroup() as" in line)
    read = next(i for i, line in enumerate(lines) if "await self._read_data()" in line)

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip())

    assert read > block
    assert all(indent(line) > indent(lines[block]) for line in lines[block + 1 : read + 1])
    assert lines[-1].strip() == "await self._close()"


def test_the_worker_is_given_the_read_loop_and_the_isolated_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run_module, "TCPServer", TCPServer)
    monkeypatch.setattr(tcp_server_module, "TaskGroup", TaskGroup)
    compat.isolate_connection_errors()  # what create_app does, before use_app_queues
    compat.use_app_queues()
    assert run_module.TCPServer is ReadLoop
    assert tcp_server_module.TaskGroup is IsolatedTaskGroup
    compat.isolate_connection_errors()
    assert tcp_server_module.TaskGroup is IsolatedTaskGroup
    # The other order gives the same group: it is an AppTaskGroup too.
    monkeypatch.setattr(tcp_server_module, "TaskGroup", TaskGroup)
    compat.use_app_queues()
    compat.isolate_connection_errors()
    assert tcp_server_module.TaskGroup is IsolatedTaskGroup
    assert issubclass(IsolatedTaskGroup, AppTaskGroup)


async def _fail() -> None:
    await trio.lowlevel.checkpoint()
    raise ValueError("in a task")


async def test_a_task_that_fails_ends_the_group_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=isolation.__name__)
    async with IsolatedTaskGroup() as group:
        group.spawn(_fail)
        await trio.sleep_forever()  # cancelled by the failure
    assert [r.getMessage() for r in caplog.records] == [
        "dropped a connection after an error in the server: ValueError('in a task')"
    ]


async def test_a_failure_in_the_block_ends_at_the_group(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=isolation.__name__)
    async with IsolatedTaskGroup():
        raise OSError("in the read loop")
    assert "OSError('in the read loop')" in caplog.records[0].getMessage()


async def test_a_failure_under_a_cancellation_is_logged_and_the_cancellation_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=isolation.__name__)

    async def fail_once_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise ValueError("while cancelled")

    reached = False
    with trio.CancelScope() as scope:
        async with IsolatedTaskGroup() as group:
            group.spawn(fail_once_cancelled)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            await trio.sleep_forever()
        reached = True  # pragma: no cover - the cancellation must not stop at the group
    assert scope.cancelled_caught
    assert not reached
    assert "ValueError('while cancelled')" in caplog.records[0].getMessage()


async def test_cancellation_goes_through(caplog: pytest.LogCaptureFixture) -> None:
    reached = False
    with trio.CancelScope() as scope:
        async with IsolatedTaskGroup() as group:
            group.spawn(trio.sleep_forever)
            scope.cancel()
            await trio.sleep_forever()
        reached = True  # pragma: no cover - the cancellation must not stop at the group
    assert scope.cancelled_caught
    assert not reached
    assert not caplog.records


async def test_without_a_failure_the_group_is_hypercorns() -> None:
    done = []

    async def work() -> None:
        await trio.lowlevel.checkpoint()
        done.append(True)

    async with IsolatedTaskGroup() as group:
        group.spawn(work)
    assert done == [True]
