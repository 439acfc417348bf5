"""Tokens never reach a log line: the token query parameter is redacted wherever it appears.

The relay itself never logs a query string or a header. Hypercorn's access log (off under
``triorelay serve``; ``--access-logfile`` under the ``hypercorn`` CLI) logs every request's
path with its query, where a browser's token travels: :func:`redact_logs` adds a filter to
its logger (and the relay's own, for good measure) that rewrites ``token=...`` as
``token=[redacted]``.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"


class RedactTokens(logging.Filter):
    """Rewrites ``<parameter>=<value>`` in a record's message to ``<parameter>=[redacted]``."""

    def __init__(self, parameter: str) -> None:
        super().__init__()
        self._pattern = re.compile(rf"(?<=[?&;\s]{re.escape(parameter)}=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._pattern.sub(REDACTED, message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact_logs(parameter: str) -> None:
    """Install :class:`RedactTokens` on the loggers that may see a request's query. Idempotent."""
    for name in ("hypercorn.access", "hypercorn.error", "triorelay"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens(parameter))
