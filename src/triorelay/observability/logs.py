"""The relay's log lines on stderr: text, as ever, or one JSON object per line (``log_format``).

``text`` is ``<time> <LEVEL> <logger>: <message>``. ``json`` is one object per line with
``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``process``, ``message``, every
field the call passed with ``extra=`` as a key of its own (the access log's ``client``,
``sub``, ``path``, ``role``, ``channel``, ``seconds``, ``messages_in``...), and ``exception``
with its traceback when there is one. Either way each handler redacts the token query
parameter (:class:`~triorelay.auth.redaction.RedactTokens`), in the message and in every
string field.

Who configures what:

- ``triorelay serve`` owns its process: :func:`logging_config` for the root logger, so
  Hypercorn's own lines come out in the same format (``serve --workers N`` hands the same
  dictionary to each worker).
- under the ``hypercorn`` CLI, Hypercorn writes its own lines its own way; the relay, at
  startup, gives its ``triorelay`` loggers a handler of their own (:func:`configure_relay_logging`),
  unless the process's logging is already configured (``hypercorn --log-config``, or the
  workers of ``triorelay serve --workers``), which then decides.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from triorelay.auth.redaction import STANDARD_ATTRIBUTES, RedactTokens

if TYPE_CHECKING:
    from triorelay.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RELAY_LOGGER = "triorelay"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line; fields passed with ``extra=`` are keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in STANDARD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field of a type JSON has not (a Path, an enum) is written as text.
        return json.dumps(entry, default=str, ensure_ascii=False)


def formatter_for(settings: Settings) -> logging.Formatter:
    """The formatter of ``settings.log_format``."""
    return JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)


def logging_config(settings: Settings) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dictionary: the root logger at ``log_level``, to
    stderr in ``log_format``, tokens redacted. Picklable (Hypercorn sends it to workers)."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter} if settings.log_format == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"relay": formatter},
        "filters": {
            "redact": {"()": RedactTokens, "parameter": settings.auth_query_parameter},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "relay",
                "filters": ["redact"],
            }
        },
        "root": {"level": settings.log_level, "handlers": ["stderr"]},
    }


def configure_logging(settings: Settings) -> None:
    """Configure this process's logging (``triorelay serve``): see :func:`logging_config`."""
    logging.config.dictConfig(logging_config(settings))


class _RelayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_relay_logging` installs (told apart to replace it)."""


def configure_relay_logging(settings: Settings) -> None:
    """Under the ``hypercorn`` CLI: write the ``triorelay`` loggers' records to stderr in
    ``log_format`` at ``log_level``, unless this process's logging is configured already (the
    root logger has a handler). Idempotent."""
    if logging.getLogger().handlers:
        return
    relay = logging.getLogger(RELAY_LOGGER)
    for handler in [h for h in relay.handlers if isinstance(h, _RelayHandler)]:
        relay.removeHandler(handler)
    handler = _RelayHandler()
    handler.setFormatter(formatter_for(settings))
    handler.addFilter(RedactTokens(settings.auth_query_parameter))
    relay.addHandler(handler)
    relay.setLevel(settings.log_level)
    relay.propagate = False  # a root handler added later would print each line twice


def access_fields(
    *,
    client: str,
    sub: str | None,
    path: str,
    role: str,
    channel: str | None,
    seconds: float,
    messages: tuple[int, int],
    size: tuple[int, int],
    close: str,
) -> dict[str, Any]:
    """The access log's fields, for ``extra=``: who, where, what (``messages`` and ``size``
    in and out) and how it ended, the same keys for every kind of connection (``sub`` and
    ``channel`` None when there is none, where the text line says ``-``)."""
    return {
        "client": client,
        "sub": sub or None,
        "path": path,
        "role": role,
        "channel": channel or None,
        "seconds": round(seconds, 3),
        "messages_in": messages[0],
        "bytes_in": size[0],
        "messages_out": messages[1],
        "bytes_out": size[1],
        "close": close,
    }
