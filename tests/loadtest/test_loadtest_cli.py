"""The generator's command line: how producers write (``--sender``, and its old spelling),
what consumers read with (``--consumer-client``), and ``queue --ack explicit``."""

from __future__ import annotations

import pytest

from loadtest.cli import build_parser, main
from loadtest.engine import CONSUMER_CLIENTS, CONSUMERS, PRODUCERS, SENDERS


@pytest.mark.parametrize("scenario", ["pair", "fanout", "queue", "max", "slow"])
def test_the_default_sender_writes_one_message_per_write(scenario: str) -> None:
    """Every traffic scenario leads with the common case: unbatched."""
    args = build_parser().parse_args([scenario, "--url", "ws://x"])
    assert args.sender == "unbatched" == SENDERS[0]


def test_lean_is_the_batched_sender() -> None:
    """--lean, the old flag, means --sender batched."""
    parse = build_parser().parse_args
    assert parse(["pair", "--url", "ws://x", "--lean"]).sender == "batched"
    assert parse(["pair", "--url", "ws://x", "--sender", "batched"]).sender == "batched"


def test_an_unknown_sender_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A typo is an argument error (exit 2), naming the choices."""
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["pair", "--url", "ws://x", "--sender", "nope"])
    assert caught.value.code == 2
    assert "unbatched" in capsys.readouterr().err


def test_every_sender_has_a_producer_client() -> None:
    """The choices and the clients are the same set."""
    assert set(SENDERS) == set(PRODUCERS)


def test_consumers_read_with_the_lean_client_unless_told() -> None:
    """The cheaper consumer by default; trio-websocket on request."""
    parse = build_parser().parse_args
    assert parse(["fanout", "--url", "ws://x"]).consumer_client == "lean" == CONSUMER_CLIENTS[0]
    args = parse(["fanout", "--url", "ws://x", "--consumer-client", "trio-websocket"])
    assert args.consumer_client == "trio-websocket"
    assert set(CONSUMER_CLIENTS) == set(CONSUMERS)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["pair", "--ack", "explicit"], "for the queue scenario"),
        (["queue", "--ack", "explicit", "--consumer-client", "trio-websocket"], "lean client"),
    ],
)
def test_ack_explicit_is_for_a_lean_queue_run(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Acked queues are measured by the queue scenario, on the lean client on both sides:
    anything else is an argument error (exit 2) before anything connects."""
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--url", "ws://127.0.0.1:9"])
    assert caught.value.code == 2
    assert said in capsys.readouterr().err


def test_the_generator_paces_its_full_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every generator process collects its oldest generation at most once per
    FULL_COLLECTION_THRESHOLD collections of the middle one (the young ones' thresholds
    untouched): the scenario's process, and each worker process."""
    import gc

    import trio

    from loadtest import cli, workers
    from loadtest.limits import FULL_COLLECTION_THRESHOLD

    def no_run(*_: object) -> None:
        raise RuntimeError("not run here")

    found = gc.get_threshold()
    monkeypatch.setattr(trio, "run", no_run)  # the runs themselves are not wanted here
    monkeypatch.setattr(cli, "raise_fd_limit", lambda wanted: wanted)  # nor this process's
    try:
        gc.set_threshold(found[0], found[1], 10)
        assert main(["pair", "--url", "ws://127.0.0.1:9"]) == 1  # (the run failed)
        assert gc.get_threshold() == (found[0], found[1], FULL_COLLECTION_THRESHOLD)
        gc.set_threshold(found[0], found[1], 10)
        assert workers.main([]) == 1
        assert gc.get_threshold() == (found[0], found[1], FULL_COLLECTION_THRESHOLD)
    finally:
        gc.set_threshold(*found)
