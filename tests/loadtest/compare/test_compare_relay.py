"""triorelay's settings as ``compare`` sees them: env variable names, defaults, policies."""

from __future__ import annotations

from typing import get_args

import pytest

from loadtest.compare.processes import child_env
from loadtest.compare.relay import POLICY_EFFECTS, default, effective, env_name, relay_env
from triorelay.settings import Policy, Settings


def test_env_names_follow_the_settings_prefix() -> None:
    """A setting's variable is the settings' env prefix and its upper-cased name."""
    assert env_name("broker") == "TRIORELAY_BROKER"
    assert relay_env(consumer_buffer_messages=4096) == {
        "TRIORELAY_CONSUMER_BUFFER_MESSAGES": "4096"
    }


def test_an_unknown_setting_is_refused() -> None:
    """A renamed or misspelt setting fails in the harness, not silently in the relay."""
    with pytest.raises(KeyError, match="no setting 'consumer_buffer'"):
        env_name("consumer_buffer")


def test_effective_values_are_the_job_env_else_the_default() -> None:
    """What the job sets wins; anything else is the relay's default."""
    assert default("consumer_buffer_messages") == Settings().consumer_buffer_messages
    assert effective("consumer_buffer_messages", {}) == str(default("consumer_buffer_messages"))
    env = relay_env(consumer_buffer_messages=7)
    assert effective("consumer_buffer_messages", env) == "7"


def test_every_slow_consumer_policy_is_described() -> None:
    """The slow note can name whichever policy is triorelay's default."""
    assert set(POLICY_EFFECTS) == set(get_args(Policy))


def test_children_do_not_inherit_our_triorelay_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TRIORELAY_* of the shell never reaches a relay; the job's own values do."""
    monkeypatch.setenv("TRIORELAY_CONSUMER_BUFFER_MESSAGES", "1")
    monkeypatch.setenv("UNRELATED", "kept")
    env = child_env(relay_env(broker="redis://h:1/0"))
    assert "TRIORELAY_CONSUMER_BUFFER_MESSAGES" not in env
    assert env["TRIORELAY_BROKER"] == "redis://h:1/0"
    assert env["UNRELATED"] == "kept"
