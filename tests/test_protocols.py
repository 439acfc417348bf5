"""The /ws and /ws/upload message sequences, tested without I/O."""

from __future__ import annotations

import pytest

from triorelay.errors import (
    CloseCode,
    ProtocolViolation,
    RequestError,
    UnsupportedData,
    UploadMismatch,
    UploadTooBig,
)
from triorelay.protocols import (
    Chunk,
    Echo,
    FileEnd,
    FileStart,
    FlowParser,
    ProxyRequest,
    UploadMetadata,
    UploadParser,
    parse_upload_metadata,
)


def test_flows_follow_one_another() -> None:
    """Each flow name is followed by its payload, then the next flow may start."""
    parser = FlowParser()
    sequence: list[tuple[str | bytes, object]] = [
        ("text", None),
        ("hi", Echo("hi")),
        ("file", FileStart()),
        (b"a", Chunk(b"a")),
        (b"", Chunk(b"")),
        (b"EOF", FileEnd()),
        ("proxy", None),
        ("q", ProxyRequest("q")),
        ("text", None),
        ("text", Echo("text")),  # a payload may be a flow name
    ]
    for message, action in sequence:
        assert parser.receive(message) == action
    assert parser.state == "command"


@pytest.mark.parametrize(
    ("before", "message", "error", "code"),
    [
        ([], "Text", ProtocolViolation, CloseCode.POLICY_VIOLATION),
        ([], b"text", UnsupportedData, CloseCode.UNSUPPORTED_DATA),
        (["text"], b"x", UnsupportedData, CloseCode.UNSUPPORTED_DATA),
        (["file"], "EOF", UnsupportedData, CloseCode.UNSUPPORTED_DATA),
    ],
)
def test_a_message_out_of_place_is_refused_with_its_close_code(
    before: list[str], message: str | bytes, error: type[RequestError], code: CloseCode
) -> None:
    """Unknown flow names are 1008; the wrong frame type is 1003; the state is unchanged."""
    parser = FlowParser()
    for earlier in before:
        parser.receive(earlier)
    state = parser.state
    with pytest.raises(error) as raised:
        parser.receive(message)
    assert raised.value.close_code == code
    assert parser.state == state


def test_unknown_flow_names_are_cut_short_in_the_reason() -> None:
    """A long unknown name is not echoed whole (close reasons are at most 123 bytes)."""
    with pytest.raises(ProtocolViolation) as raised:
        FlowParser().receive("x" * 1000)
    assert len(str(raised.value).encode()) < 123


def test_upload_metadata_filename_is_only_a_hint() -> None:
    """Directories and control characters are stripped; '..' and empty names are dropped."""
    assert parse_upload_metadata('{"filename": "a/b\\\\c\\u0000d.txt"}', 10).filename == "cd.txt"
    assert parse_upload_metadata('{"filename": "../.."}', 10).filename is None
    assert parse_upload_metadata('{"filename": "dir/"}', 10).filename is None
    long = parse_upload_metadata('{"filename": "' + "n" * 300 + '"}', 10).filename
    assert long == "n" * 255


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ('{"size": -1}', ProtocolViolation),
        ('{"size": 1.5}', ProtocolViolation),
        ('{"size": true}', ProtocolViolation),
        ('{"size": 11}', UploadTooBig),
        ('{"filename": 3}', ProtocolViolation),
        ('{"sha256": 3}', ProtocolViolation),
        ('"just a string"', ProtocolViolation),
    ],
)
def test_upload_metadata_is_checked(metadata: str, error: type[RequestError]) -> None:
    """Sizes are whole non-negative numbers within the limit; names and digests are strings."""
    with pytest.raises(error):
        parse_upload_metadata(metadata, 10)


def test_upload_sequence_counts_bytes_and_repeats() -> None:
    """Metadata, chunks, EOF; a declared size is checked at EOF; then the next upload."""
    parser = UploadParser(max_upload_bytes=100)
    digest = "AB" * 32
    assert parser.receive(f'{{"size": 3, "sha256": "{digest}"}}') == UploadMetadata(
        size=3, sha256=digest.lower()
    )
    assert parser.receive(b"ab") == Chunk(b"ab")
    assert parser.receive(b"c") == Chunk(b"c")
    assert parser.receive("EOF") == FileEnd()
    assert parser.receive("{}") == UploadMetadata()
    assert parser.receive("EOF") == FileEnd()
    parser.receive('{"size": 1}')
    with pytest.raises(UploadMismatch):
        parser.receive(b"ab")


def test_deeply_nested_upload_metadata_is_a_policy_violation() -> None:
    """Metadata nested past the parser's recursion limit closes with 1008, not 1011."""
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ProtocolViolation) as refused:
        parse_upload_metadata(deep, 1024)
    assert refused.value.close_code == CloseCode.POLICY_VIOLATION
