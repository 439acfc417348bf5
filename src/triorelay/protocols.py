"""The message sequences of ``/ws`` and ``/ws/upload``, as state machines. No I/O.

``/ws``, compatible with the FastAPI endpoint it replaces; any number of flows, one after the
other, over one connection::

    client: text "text",  then a text payload          server: "Echo: <payload>"
    client: text "file",  then binary chunks, then binary "EOF"
                                                        server: "File received successfully"
    client: text "proxy", then a text message          server: "External response: <reply>"

``/ws/upload``, any number of uploads, one after the other::

    client: text {"filename": "a.pdf", "size": 123, "sha256": "<64 hex>"}   (every key optional)
    client: binary chunks, then the text "EOF"
    server: text {"id": "<32 hex>", "bytes": 123, "sha256": "<64 hex>", "filename": "a.pdf"}

In ``/ws/upload`` data is binary and control is text, so any chunk may hold any bytes; in
``/ws`` a chunk that is exactly ``EOF`` ends the file (the legacy protocol's ambiguity).

:class:`FlowParser` and :class:`UploadParser` turn each message into an action for the route,
or raise: :class:`UnsupportedData` (close 1003) for the wrong frame type,
:class:`ProtocolViolation` / :class:`UploadMismatch` (1008) for a message the protocol does not
allow, :class:`UploadTooBig` (1009) past ``max_upload_bytes``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from triorelay.envelopes import Payload
from triorelay.errors import ProtocolViolation, UnsupportedData, UploadMismatch, UploadTooBig

FILE_EOF = b"EOF"
"""The binary frame that ends a file in ``/ws``."""
UPLOAD_EOF = "EOF"
"""The text frame that ends an upload in ``/ws/upload``."""
MAX_FILENAME_CHARS = 255
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Echo:
    """``/ws``: answer ``Echo: <text>``."""

    text: str


@dataclass(frozen=True, slots=True)
class FileStart:
    """``/ws``: a file begins (it may have no chunks at all)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """The next chunk of the file or upload in progress."""

    data: bytes


@dataclass(frozen=True, slots=True)
class FileEnd:
    """The file or upload in progress is complete."""


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """``/ws``: forward ``text`` to the upstream ``default``; answer with its reply."""

    text: str


FlowAction = Echo | FileStart | Chunk | FileEnd | ProxyRequest
FlowState = Literal["command", "text", "file", "proxy"]
FLOWS = ("text", "file", "proxy")


class FlowParser:
    """The ``/ws`` protocol: which flow is in progress, and what each message means in it."""

    def __init__(self) -> None:
        self.state: FlowState = "command"

    def receive(self, payload: Payload) -> FlowAction | None:
        """The action ``payload`` asks for; None when it only names the next flow.

        Raises :class:`UnsupportedData` or :class:`ProtocolViolation`; the state is then
        unchanged and the connection should be closed.
        """
        state = self.state
        if state == "command":
            if not isinstance(payload, str):
                raise UnsupportedData("expected a flow name as text: text, file or proxy")
            if payload == "text":
                self.state = "text"
            elif payload == "file":
                self.state = "file"
                return FileStart()
            elif payload == "proxy":
                self.state = "proxy"
            else:
                raise ProtocolViolation(
                    f"unknown flow {payload[:32]!r}: expected text, file or proxy"
                )
            return None
        if state == "file":
            if isinstance(payload, str):
                raise UnsupportedData("a file is binary chunks ended by the binary frame EOF")
            if payload == FILE_EOF:
                self.state = "command"
                return FileEnd()
            return Chunk(payload)
        if not isinstance(payload, str):
            raise UnsupportedData(f"the {state} flow takes a text message")
        self.state = "command"
        return Echo(payload) if state == "text" else ProxyRequest(payload)


@dataclass(frozen=True, slots=True)
class UploadMetadata:
    """What a ``/ws/upload`` client declares before its chunks (each part optional)."""

    filename: str | None = None
    size: int | None = None
    sha256: str | None = None


def parse_upload_metadata(payload: Payload, max_upload_bytes: int) -> UploadMetadata:
    """Parse and check the metadata message of ``/ws/upload``.

    ``filename`` is only a hint, kept for downloads: directories are stripped and control
    characters removed, and it never names anything on disk.
    """
    if not isinstance(payload, str):
        raise UnsupportedData("an upload starts with its metadata as a JSON text message")
    try:
        fields = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to parse
        raise ProtocolViolation("upload metadata must be a JSON object") from None
    if not isinstance(fields, dict):
        raise ProtocolViolation("upload metadata must be a JSON object")
    unknown = sorted(set(fields) - {"filename", "size", "sha256"})
    if unknown:
        raise ProtocolViolation(f"unknown upload metadata: {', '.join(unknown)[:64]}")
    filename, size, sha256 = fields.get("filename"), fields.get("size"), fields.get("sha256")
    if filename is not None:
        if not isinstance(filename, str):
            raise ProtocolViolation("filename must be a string")
        filename = _UNPRINTABLE.sub("", re.split(r"[/\\]", filename)[-1])[:MAX_FILENAME_CHARS]
        filename = filename if filename not in ("", ".", "..") else None
    if size is not None:
        if type(size) is not int or size < 0:
            raise ProtocolViolation("size must be a whole number of bytes")
        if size > max_upload_bytes:
            raise UploadTooBig(f"upload of {size} bytes over the limit {max_upload_bytes}")
    if sha256 is not None:
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
            raise ProtocolViolation("sha256 must be 64 hexadecimal digits")
        sha256 = sha256.lower()
    return UploadMetadata(filename=filename, size=size, sha256=sha256)


UploadAction = UploadMetadata | Chunk | FileEnd


class UploadParser:
    """The ``/ws/upload`` protocol: metadata, chunks, ``EOF``; then the next upload.

    Chunks beyond a declared size are refused as they arrive, not at the end.
    """

    def __init__(self, max_upload_bytes: int) -> None:
        self.max_upload_bytes = max_upload_bytes
        self.metadata: UploadMetadata | None = None
        self.received = 0

    def receive(self, payload: Payload) -> UploadAction:
        """The action ``payload`` asks for; raises a :class:`RequestError` subclass."""
        metadata = self.metadata
        if metadata is None:
            self.metadata = parse_upload_metadata(payload, self.max_upload_bytes)
            self.received = 0
            return self.metadata
        if isinstance(payload, bytes):
            self.received += len(payload)
            if metadata.size is not None and self.received > metadata.size:
                raise UploadMismatch(f"more bytes than the {metadata.size} declared")
            return Chunk(payload)
        if payload != UPLOAD_EOF:
            raise ProtocolViolation("during an upload, the only text message is EOF")
        if metadata.size is not None and self.received != metadata.size:
            raise UploadMismatch(f"{self.received} bytes received, {metadata.size} declared")
        self.metadata = None
        return FileEnd()
