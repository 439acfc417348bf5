"""The ``triorelay`` command line: settings errors are reported, not raised."""

from __future__ import annotations

import pytest

from triorelay.cli import main


def test_bad_setting_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad TRIORELAY_* value exits 2 with a message naming the setting."""
    monkeypatch.setenv("TRIORELAY_CONSUMER_BUFFER_MESSAGES", "-1")
    assert main(["serve", "--port", "0"]) == 2
    assert "TRIORELAY_CONSUMER_BUFFER_MESSAGES" in capsys.readouterr().err


def test_missing_config_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--config with a file that does not exist exits 2 and says which file."""
    assert main(["serve", "--config", "/nonexistent/triorelay.toml"]) == 2
    assert "/nonexistent/triorelay.toml" in capsys.readouterr().err


def test_several_workers_need_a_shared_broker(capsys: pytest.CaptureFixture[str]) -> None:
    """--workers 2 with the memory broker is refused: channels would split between workers."""
    assert main(["serve", "--port", "0", "--workers", "2"]) == 2
    assert "memory broker" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the version."""
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert "triorelay 0.1.0" in capsys.readouterr().out
