"""The load-test message format (I/O-free).

A message is one JSON text frame with the scheduling data at a fixed prefix::

    {"r":"1a2b3c4d","i":"0003","s":"000000000042","t":"00000123456789012345","p":"xxxx..."}

* ``r``: run id, 8 lowercase hex digits, so consumers can ignore messages of earlier runs that
  a server still holds (the baseline's global queue keeps whatever nobody consumed);
* ``i``: producer index, 4 digits; ``s``: per-producer sequence number, 12 digits;
* ``t``: *scheduled* send time in ``time.monotonic_ns()`` nanoseconds, 20 digits (the clock is
  system-wide on Linux, so producers and consumers in different processes on one host agree);
* ``p``: ASCII padding so the whole frame is ``payload_bytes`` long (when that is at least
  :data:`HEADER_BYTES` + 2).

Numbers are zero-padded *strings* because JSON forbids leading zeros in numbers. Fixed widths let
:func:`decode` slice instead of parsing JSON, which matters at tens of thousands of messages per
second. The baseline re-serialises every message (``receive_json`` then ``send_json`` with compact
separators), which reproduces this exact layout; anything else falls back to ``json.loads``.
"""

from __future__ import annotations

import json
from typing import Final, NamedTuple

RUN_ID_CHARS: Final = 8
PRODUCER_DIGITS: Final = 4
SEQ_DIGITS: Final = 12
TIME_DIGITS: Final = 20
MAX_PRODUCER: Final = 10**PRODUCER_DIGITS - 1
MAX_SEQ: Final = 10**SEQ_DIGITS - 1
MAX_TIME_NS: Final = 10**TIME_DIGITS - 1

_R_AT: Final = len('{"r":"')
_I_AT: Final = _R_AT + RUN_ID_CHARS + len('","i":"')
_S_AT: Final = _I_AT + PRODUCER_DIGITS + len('","s":"')
_T_AT: Final = _S_AT + SEQ_DIGITS + len('","t":"')
_P_AT: Final = _T_AT + TIME_DIGITS + len('","p":"')
#: Length of everything before the padding.
HEADER_BYTES: Final = _P_AT
#: Length of a message with empty padding: the smallest message.
MIN_MESSAGE_BYTES: Final = HEADER_BYTES + len('"}')


class CodecError(ValueError):
    """A frame is not a load-test message, or a field is out of range."""


class Header(NamedTuple):
    """The decoded fixed prefix of a message."""

    run: str
    producer: int
    seq: int
    scheduled_ns: int


def padding_for(payload_bytes: int) -> str:
    """Return the padding that makes a message ``payload_bytes`` long (never negative).

    Compute it once per run and pass it to :func:`encode`; messages smaller than
    :data:`MIN_MESSAGE_BYTES` cannot be made, so the padding is then empty.
    """
    return "x" * max(0, payload_bytes - MIN_MESSAGE_BYTES)


def new_run_id(entropy: bytes) -> str:
    """Return a run id made from the first 4 bytes of ``entropy`` (pass ``os.urandom(4)``)."""
    if len(entropy) < 4:
        raise CodecError("a run id needs 4 bytes of entropy")
    return entropy[:4].hex()


def encode(run: str, producer: int, seq: int, scheduled_ns: int, padding: str = "") -> str:
    """Return the JSON text of one message.

    Raises :class:`CodecError` if a field does not fit its width or is negative, or if ``run``
    is not :data:`RUN_ID_CHARS` lowercase hex digits. ``padding`` must be JSON-safe without
    escaping (use :func:`padding_for`).
    """
    if len(run) != RUN_ID_CHARS or run.strip("0123456789abcdef"):
        raise CodecError(f"run id must be {RUN_ID_CHARS} lowercase hex digits, got {run!r}")
    if not (
        0 <= producer <= MAX_PRODUCER and 0 <= seq <= MAX_SEQ and 0 <= scheduled_ns <= MAX_TIME_NS
    ):
        raise CodecError(f"field out of range: producer={producer} seq={seq} t={scheduled_ns}")
    return (
        f'{{"r":"{run}","i":"{producer:04d}","s":"{seq:012d}",'
        f'"t":"{scheduled_ns:020d}","p":"{padding}"}}'
    )


def decode(text: str) -> Header:
    """Return the header of a message, slicing the fixed prefix when it is present.

    Falls back to a full JSON parse when the frame does not start with the exact prefix (for
    example a server that re-serialises with other separators). Raises :class:`CodecError` when the
    frame is not a load-test message.
    """
    if text.startswith('{"r":"') and text[_P_AT - 7 : _P_AT] == '","p":"':
        try:
            return Header(
                text[_R_AT : _R_AT + RUN_ID_CHARS],
                int(text[_I_AT : _I_AT + PRODUCER_DIGITS]),
                int(text[_S_AT : _S_AT + SEQ_DIGITS]),
                int(text[_T_AT : _T_AT + TIME_DIGITS]),
            )
        except ValueError:
            pass  # not digits where they should be: let the slow path decide
    try:
        obj = json.loads(text)
        return Header(str(obj["r"]), int(obj["i"]), int(obj["s"]), int(obj["t"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise CodecError(f"not a load-test message: {text[:80]!r}") from exc
