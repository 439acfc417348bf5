"""What ``compare`` knows of triorelay's settings: their names, environment variables and
defaults, read from :class:`triorelay.settings.Settings` so the harness and its report cannot
drift from the relay (I/O-free).

This is the only module of ``loadtest`` that imports ``triorelay``, and it imports nothing but
the settings and, for the ``triorelay+tokens`` side, the rights a token can grant and the
development minter (:func:`mint_token`): relays run as subprocesses (``python -m triorelay
serve``) configured through these environment variables. Their environment holds none of the
``TRIORELAY_*`` variables of the shell that started ``compare`` (see
:func:`loadtest.compare.processes.child_env`), so a setting a job does not give is at its
default, the value the report names.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, Final

from triorelay.auth.grants import CHANNEL_RIGHTS
from triorelay.auth.tokens import mint
from triorelay.settings import MIN_HMAC_SECRET_BYTES, Settings

#: Prefix of every setting's environment variable (``TRIORELAY_``).
ENV_PREFIX: Final[str] = Settings.model_config["env_prefix"]

#: What a relay does to a broadcast consumer whose buffer is full, by ``slow_consumer_policy``
#: (every :data:`~triorelay.settings.Policy`; a test checks that none is missing).
POLICY_EFFECTS: Final[Mapping[str, str]] = {
    "disconnect": "closes the stalled one with 1013",
    "drop_oldest": "drops the stalled one's oldest message",
    "drop_newest": "drops each new message for the stalled one",
    "block": "makes the producers wait for the stalled one",
}


def env_name(setting: str) -> str:
    """Return the environment variable of ``setting`` (``TRIORELAY_BROKER`` for ``broker``).

    Raises ``KeyError`` for a name that is not a field of :class:`~triorelay.settings.Settings`,
    so a renamed setting fails here instead of being silently ignored by the relay.
    """
    if setting not in Settings.model_fields:
        raise KeyError(f"triorelay has no setting {setting!r}")
    return f"{ENV_PREFIX}{setting}".upper()


def relay_env(**values: object) -> dict[str, str]:
    """Return the environment that sets each of ``values`` on a relay, by setting name."""
    return {env_name(name): str(value) for name, value in values.items()}


def default(setting: str) -> Any:
    """Return the default of ``setting`` (``KeyError`` for an unknown one)."""
    return Settings.model_fields[setting].default


def effective(setting: str, env: Mapping[str, str]) -> str:
    """Return ``setting`` as a relay started with ``env`` (and nothing else of ours) sees it."""
    return env.get(env_name(setting), str(default(setting)))


#: The ``sub`` of the tokens ``compare`` mints (one client: every connection of a run shares it).
TOKEN_SUBJECT: Final = "loadtest"
#: What those tokens grant (their ``triorelay`` claim): every channel right on every channel.
TOKEN_GRANT: Final[Mapping[str, Any]] = {"channels": {"*": sorted(CHANNEL_RIGHTS)}}


def new_hmac_secret() -> str:
    """Return a fresh random HMAC secret of triorelay's minimum size (hex of that many bytes)."""
    return secrets.token_hex(MIN_HMAC_SECRET_BYTES)


def mint_token(secret: str, *, ttl_seconds: float) -> str:
    """Return a token signed with ``secret`` for :data:`TOKEN_SUBJECT` granting
    :data:`TOKEN_GRANT`, valid for ``ttl_seconds``."""
    return mint(secret, TOKEN_SUBJECT, dict(TOKEN_GRANT), ttl_seconds=ttl_seconds)
