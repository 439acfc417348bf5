"""Tokens never reach a log line: the token query parameter is redacted wherever it appears.

The relay itself never logs a query string or a header. Hypercorn's access log (off under
``triorelay serve``; ``--access-logfile`` under the ``hypercorn`` CLI) logs every request's
path with its query, where a browser's token travels: :func:`redact_logs` adds a filter to
its logger (and the relay's own, for good measure) that rewrites ``token=...`` as
``token=[redacted]``. The handlers the relay installs carry the same filter
(:mod:`triorelay.observability.logs`), so every record they write is redacted, in its message
and in each string field passed with ``extra=`` (which a JSON line writes as it is).
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"

STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}
"""What every log record has by itself: any other attribute came with ``extra=``."""


class RedactTokens(logging.Filter):
    """Rewrites ``<parameter>=<value>`` in a record's message to ``<parameter>=[redacted]``."""

    def __init__(self, parameter: str) -> None:
        super().__init__()
        # The parameter at the start of the text (a bare query string) or after ?, &, ; or a
        # space; its value up to the next separator.
        self._pattern = re.compile(rf"((?:^|[?&;\s]){re.escape(parameter)}=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        for key, value in record.__dict__.items():
            if key not in STANDARD_ATTRIBUTES and isinstance(value, str):
                record.__dict__[key] = self.redact(value)
        return True

    def redact(self, text: str) -> str:
        """``text`` with the parameter's every value replaced by ``[redacted]``."""
        return self._pattern.sub(rf"\g<1>{REDACTED}", text)


def redact_logs(parameter: str) -> None:
    """Install :class:`RedactTokens` on the loggers that may see a request's query. Idempotent."""
    for name in ("hypercorn.access", "hypercorn.error", "triorelay"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens(parameter))
