"""The message codec: fixed-prefix encoding that stays valid JSON."""

from __future__ import annotations

import json

import pytest

from loadtest import codec

RUN = "0a1b2c3d"


def test_encode_is_valid_json_with_fields() -> None:
    """An encoded message parses as JSON with zero-padded string fields."""
    text = codec.encode(RUN, 3, 42, 123_456_789, "xx")
    assert json.loads(text) == {
        "r": RUN,
        "i": "0003",
        "s": "000000000042",
        "t": "00000000000123456789",
        "p": "xx",
    }


def test_decode_fast_path_round_trip() -> None:
    """decode() returns the header that encode() wrote."""
    text = codec.encode(RUN, 7, 99, 10**19, codec.padding_for(200))
    assert codec.decode(text) == codec.Header(RUN, 7, 99, 10**19)


def test_reserialised_by_the_baseline_still_decodes() -> None:
    """Starlette's send_json (compact separators) reproduces the exact layout."""
    text = codec.encode(RUN, 1, 2, 3, "pad")
    assert json.dumps(json.loads(text), separators=(",", ":")) == text


def test_decode_slow_path_for_other_layouts() -> None:
    """A frame with spaces or reordered keys decodes through json.loads."""
    text = json.dumps({"t": "5", "s": "6", "i": "7", "r": RUN, "p": ""})
    assert codec.decode(text) == codec.Header(RUN, 7, 6, 5)


@pytest.mark.parametrize(
    "frame", ["", "{}", '{"id": 3}', "not json", '{"r":"0a1b2c3d","i":"x","s":"1","t":"2"}']
)
def test_decode_rejects_foreign_frames(frame: str) -> None:
    """Frames that are not load-test messages raise CodecError."""
    with pytest.raises(codec.CodecError):
        codec.decode(frame)


@pytest.mark.parametrize("size", [0, 10, codec.MIN_MESSAGE_BYTES, 128, 4096])
def test_padding_makes_exact_sizes(size: int) -> None:
    """Messages are exactly payload_bytes long when that is possible, else the minimum."""
    text = codec.encode(RUN, 0, 0, 0, codec.padding_for(size))
    assert len(text.encode()) == max(size, codec.MIN_MESSAGE_BYTES)


@pytest.mark.parametrize(("producer", "seq", "t"), [(-1, 0, 0), (10**4, 0, 0), (0, 10**12, 0)])
def test_encode_rejects_out_of_range(producer: int, seq: int, t: int) -> None:
    """Fields that do not fit their width are refused rather than silently corrupted."""
    with pytest.raises(codec.CodecError):
        codec.encode(RUN, producer, seq, t)


@pytest.mark.parametrize("run", ["", "1234567", "123456789", "ABCDEF12", "zzzzzzzz"])
def test_encode_rejects_bad_run_ids(run: str) -> None:
    """Run ids are exactly 8 lowercase hex digits, so the fixed prefix holds."""
    with pytest.raises(codec.CodecError):
        codec.encode(run, 0, 0, 0)


def test_new_run_id_from_entropy() -> None:
    """A run id is the hex of 4 bytes of entropy."""
    assert codec.new_run_id(b"\x01\x02\xab\xff\x00") == "0102abff"
    with pytest.raises(codec.CodecError):
        codec.new_run_id(b"\x01")
