"""The relay's background tasks are supervised: a failure is logged, counted and restarted."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from tests.conftest import StartRelay
from triorelay.lifecycle.supervisor import Supervisor, TaskState


async def test_a_failing_task_is_restarted_with_backoff_and_counted(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Two failures: two restarts, each logged with its traceback; then it runs, healthy."""
    supervisor = Supervisor()
    attempts: list[float] = []
    running = trio.Event()

    async def flaky(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        attempts.append(trio.current_time())
        task_status.started()
        if len(attempts) <= 2:
            raise ValueError(f"malformed entry {len(attempts)}")
        running.set()
        await trio.sleep_forever()

    with trio.fail_after(60), caplog.at_level(logging.ERROR):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run, "reader", flaky)
            await running.wait()
            await trio.testing.wait_all_tasks_blocked()
            state = supervisor.tasks["reader"]
            assert (state.running, state.restarts) == (True, 2)
            assert state.last_error == "ValueError: malformed entry 2"
            assert supervisor.healthy
            nursery.cancel_scope.cancel()
    assert attempts[2] - attempts[1] >= 2 * (attempts[1] - attempts[0]) > 0  # the delay doubles
    failures = [r for r in caplog.records if "relay task 'reader' failed" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)


async def test_a_task_that_is_down_makes_the_relay_unhealthy() -> None:
    """Between a failure and its restart the supervisor is not healthy."""
    supervisor = Supervisor()
    failed = trio.Event()

    async def broken(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        failed.set()
        raise RuntimeError("boom")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.run, "broken", broken)
            await failed.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert not supervisor.healthy
            assert supervisor.statistics()["broken"]["restarts"] >= 1
            nursery.cancel_scope.cancel()


async def test_cancellation_is_not_a_failure() -> None:
    """Cancelling a supervised task ends it; nothing is counted or restarted."""
    supervisor = Supervisor()

    async def forever(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run, "forever", forever)
            nursery.cancel_scope.cancel()
    assert supervisor.tasks["forever"].restarts == 0


async def test_healthz_answers_503_while_a_relay_task_is_down(start_relay: StartRelay) -> None:
    """/healthz is 503 while a supervised task restarts; admin callers see the task's state."""
    relay = await start_relay()
    assert (await relay.http.get("/healthz")).status_code == 200
    assert set(relay.relay.supervisor.tasks) == {
        "broker",
        "close reaper",
        "liveness",
        "upload sweep",
    }
    down = TaskState(running=False, restarts=1, last_error="x", down=True)
    relay.relay.supervisor.tasks["liveness"] = down
    answer = await relay.http.get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["status"] == "a relay task is restarting"
    assert answer.json()["tasks"]["liveness"] == {
        "running": False,
        "restarts": 1,
        "last_error": "x",
    }
