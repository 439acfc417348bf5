"""/ws/upload with metadata and sha256, GET /files/{id}, and what the store leaves on disk."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection

from tests.conftest import StartRelay
from tests.helpers import RunningRelay, closed_with, refused_upgrade, stored_files, wait_until
from triorelay.uploads import UploadStore


async def upload(ws: WebSocketConnection, metadata: dict[str, Any], chunks: list[bytes]) -> Any:
    await ws.send_message(json.dumps(metadata))
    for chunk in chunks:
        await ws.send_message(chunk)
    await ws.send_message("EOF")
    return json.loads(await ws.get_message())


async def test_upload_answers_id_size_and_sha256_then_downloads_byte_for_byte(
    relay: RunningRelay,
) -> None:
    """Two uploads on one connection; each downloads identical, with its name and digest."""
    first = [b"EOF", bytes(range(256)) * 1000, b""]  # a chunk "EOF" is data here
    data = b"".join(first)
    sha = hashlib.sha256(data).hexdigest()
    async with relay.websocket("/ws/upload") as ws:
        answer = await upload(
            ws, {"filename": "../../etc/réport.bin", "size": len(data), "sha256": sha}, first
        )
        second = await upload(ws, {}, [b"plain"])
    assert answer["bytes"] == len(data)
    assert answer["sha256"] == sha
    assert answer["filename"] == "réport.bin"  # a hint only: directories stripped
    assert second["sha256"] == hashlib.sha256(b"plain").hexdigest()
    assert second["filename"] is None
    assert answer["id"] != second["id"]

    response = await relay.http.get(f"/files/{answer['id']}")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"r_port.bin\"; filename*=UTF-8''r%C3%A9port.bin"
    )
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert response.headers["repr-digest"] == f"sha-256=:{digest}:"
    partial = await relay.http.get(f"/files/{answer['id']}", headers={"Range": "bytes=3-5"})
    assert partial.status_code == 206
    assert partial.content == data[3:6]
    assert (await relay.http.get(f"/files/{second['id']}")).content == b"plain"


@pytest.mark.parametrize(
    ("metadata", "chunks", "code", "reason"),
    [
        ({"sha256": "0" * 64}, [b"abc"], 1008, "sha256 mismatch: declared 000000000000…, got "),
        ({"size": 2}, [b"abc"], 1008, "more bytes than the 2 declared"),
        ({"size": 4}, [b"abc"], 1008, "3 bytes received, 4 declared"),
        ({"size": 10_001}, [], 1009, "upload of 10001 bytes over the limit 10000"),
        ({}, [b"x" * 6000, b"x" * 6000], 1009, "upload over the limit of 10000 bytes"),
        ({"path": "/etc/passwd"}, [], 1008, "unknown upload metadata: path"),
        ({"sha256": "xyz"}, [], 1008, "sha256 must be 64 hexadecimal digits"),
        ({}, ["END"], 1008, "during an upload, the only text message is EOF"),
    ],
    ids=["sha256", "size-over", "size-under", "declared-too-big", "too-big", "unknown-key",
         "bad-sha256", "bad-text"],
)  # fmt: skip
async def test_a_bad_upload_closes_with_a_reason_and_leaves_nothing(
    start_relay: StartRelay, metadata: dict[str, Any], chunks: list[bytes], code: int, reason: str
) -> None:
    """A mismatch or a limit closes the connection and discards the file."""
    relay = await start_relay(max_upload_bytes=10_000)
    async with relay.websocket("/ws/upload") as ws:
        await ws.send_message(json.dumps(metadata))
        for chunk in chunks:
            await ws.send_message(chunk)
        await ws.send_message("EOF")
        got_code, got_reason = await closed_with(ws)
    assert got_code == code
    assert got_reason is not None
    assert got_reason.startswith(reason)
    assert stored_files(relay) == []


@pytest.mark.parametrize(("message", "code"), [(b"{}", 1003), ("not json", 1008), ("[1]", 1008)])
async def test_metadata_must_be_a_json_object_as_text(
    relay: RunningRelay, message: str | bytes, code: int
) -> None:
    """Metadata as binary closes with 1003, anything but a JSON object with 1008."""
    async with relay.websocket("/ws/upload") as ws:
        await ws.send_message(message)
        assert (await closed_with(ws))[0] == code


@pytest.mark.parametrize(
    "path",
    [
        "/files/../settings.py",
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files/%2Fetc%2Fpasswd",
        "/files/..",
        "/files/" + "0" * 31,
        "/files/" + "A" * 32,
        "/files/" + "0" * 32,  # well formed, but no such file
    ],
)
async def test_downloads_refuse_anything_but_a_stored_id(relay: RunningRelay, path: str) -> None:
    """Path traversal, malformed and unknown ids are all 404."""
    secret = relay.relay.settings.upload_dir.parent / "secret"
    secret.write_text("never served")
    response = await relay.http.get(path)
    assert response.status_code == 404
    assert b"never served" not in response.content


async def test_an_upload_in_progress_cannot_be_downloaded(relay: RunningRelay) -> None:
    """Neither the temporary file nor the description of a file is served."""
    async with relay.websocket("/ws/upload") as ws:
        await ws.send_message(json.dumps({"filename": "x"}))
        await ws.send_message(b"partial")
        while not stored_files(relay):
            await trio.testing.wait_all_tasks_blocked()
        (part,) = stored_files(relay)
        assert part.name.startswith(".part-")
        assert (await relay.http.get(f"/files/{part.name}")).status_code == 404
        assert (await relay.http.get(f"/files/{part.name[6:]}")).status_code == 404
        await ws.send_message("EOF")
        answer = json.loads(await ws.get_message())
    assert (await relay.http.get(f"/files/{answer['id']}.json")).status_code == 404
    assert (await relay.http.get(f"/files/{answer['id']}")).content == b"partial"


def test_store_paths_are_only_well_formed_ids(tmp_path: Any) -> None:
    """UploadStore.path_of turns nothing but 32 lowercase hex digits into a path."""
    store = UploadStore(tmp_path, 10)
    assert store.path_of("0123456789abcdef" * 2) == tmp_path / ("0123456789abcdef" * 2)
    for bad in ["../x", "/etc/passwd", "0" * 31, "0" * 33, ".part-" + "0" * 32, "0" * 31 + "\n"]:
        assert store.path_of(bad) is None


async def test_an_unwritable_upload_directory_closes_1011(start_relay: StartRelay) -> None:
    """An upload directory that cannot be created closes with 1011, nothing internal said."""
    relay = await start_relay()
    blocker = relay.relay.settings.upload_dir
    blocker.write_text("a file where the directory should be")
    async with relay.websocket("/ws") as ws:
        await ws.send_message("file")
        assert await closed_with(ws) == (1011, "the upload could not be stored")


async def test_unknown_proxy_upstream_is_refused_before_the_upgrade(relay: RunningRelay) -> None:
    """/ws/proxy/{name} for an unconfigured name is HTTP 404, nothing dialled."""
    status, body = await refused_upgrade(relay.port, "/ws/proxy/elsewhere")
    assert (status, body) == (404, b"no upstream named 'elsewhere'")


async def test_partial_uploads_a_dead_relay_left_are_removed_at_start(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    """At start the relay removes temporary files untouched for stale_upload_seconds (their
    relay died mid-upload), and leaves recent ones (another relay may be writing) and
    committed files alone."""
    directory = tmp_path / "shared-uploads"
    directory.mkdir()
    stale, recent = directory / ".part-stale", directory / ".part-recent"
    committed = directory / ("0" * 32)
    for path in (stale, recent, committed, directory / ".part-stale.json"):
        path.write_bytes(b"x")
    hour_ago = time.time() - 3600
    for path in (stale, committed, directory / ".part-stale.json"):
        os.utime(path, (hour_ago, hour_ago))
    await start_relay(upload_dir=directory, stale_upload_seconds=60)
    assert sorted(p.name for p in directory.iterdir()) == [".part-recent", "0" * 32]


async def test_a_slow_download_is_not_cut_by_the_response_timeout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Quart's response timeout (here 0.2 s) does not apply to files: a client reading a
    16 MiB file slowly gets all of it."""
    from functools import partial

    import httpx

    from tests.conftest import make_settings
    from triorelay.app import create_app
    from triorelay.server import serve

    settings = make_settings(upload_dir=tmp_path / "uploads")
    app = create_app(settings, handle_signals=False)
    app.config["RESPONSE_TIMEOUT"] = 0.2
    stop = trio.Event()
    (url,) = await nursery.start(partial(serve, settings, shutdown_trigger=stop, app=app))
    data = os.urandom(16 * 1024 * 1024)
    ws_url = "ws" + url.removeprefix("http")
    from trio_websocket import open_websocket_url

    async with open_websocket_url(ws_url + "/ws/upload") as ws:
        answer = await upload(
            ws, {}, [data[i : i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024)]
        )
    received = bytearray()
    started = trio.current_time()
    async with (
        httpx.AsyncClient(base_url=url) as http,
        http.stream("GET", f"/files/{answer['id']}") as response,
    ):
        async for chunk in response.aiter_bytes(256 * 1024):
            received += chunk
            await trio.sleep(0.02)  # a slow reader: ~1.3 s for the file, past the 0.2 s timeout
    assert trio.current_time() - started > 0.5
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()
    stop.set()


async def test_the_upload_quota_closes_1013_and_removes_the_partial_file(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    """Past upload_quota_bytes an upload is closed with 1013 ``upload storage full`` and its
    partial file removed; once a file is gone again, uploads are taken."""
    directory = tmp_path / "quota"
    relay = await start_relay(upload_dir=directory, upload_quota_bytes=3 * 1024 * 1024)
    mib = os.urandom(1024 * 1024)
    async with relay.websocket("/ws/upload") as ws:
        first = await upload(ws, {}, [mib, mib])
    assert first["bytes"] == 2 * len(mib)
    async with relay.websocket("/ws/upload") as ws:
        await ws.send_message("{}")
        for chunk in (mib, mib):
            await ws.send_message(chunk)
        assert await closed_with(ws) == (1013, "upload storage full")
    assert [p.name for p in directory.iterdir() if p.name.startswith(".part-")] == []
    assert relay.relay.uploads.bytes_held == 2 * len(mib)
    for path in stored_files(relay):
        path.unlink()
    await relay.relay.uploads.sweep_and_recount(ttl_seconds=3600, stale_seconds=3600)
    async with relay.websocket("/ws/upload") as ws:
        assert (await upload(ws, {}, [mib, mib]))["bytes"] == 2 * len(mib)


async def test_the_sweep_removes_expired_files_and_stale_parts_on_its_timer(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    """Every upload_sweep_seconds, stored files older than upload_ttl_seconds (with their
    description) and stale partial files go; recent ones stay."""
    directory = tmp_path / "ttl"
    relay = await start_relay(
        upload_dir=directory, upload_ttl_seconds=60, upload_sweep_seconds=0.05
    )
    async with relay.websocket("/ws/upload") as ws:
        old = (await upload(ws, {}, [b"old"]))["id"]
        recent = (await upload(ws, {}, [b"recent"]))["id"]
    part = directory / ".part-dead"
    part.write_bytes(b"left by a dead relay")
    long_ago = time.time() - 7200
    for path in (directory / old, directory / f"{old}.json", part):
        os.utime(path, (long_ago, long_ago))
    await wait_until(lambda: not (directory / old).exists() and not part.exists())
    assert sorted(p.name for p in directory.iterdir()) == [recent, f"{recent}.json"]
    assert (await relay.http.get(f"/files/{old}")).status_code == 404
    assert (await relay.http.get(f"/files/{recent}")).content == b"recent"


async def test_a_sweep_keeps_what_was_reserved_while_it_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recount is the disk's count plus what uploads reserved while the sweep ran, so an
    upload in progress is not forgotten by the quota."""
    store = UploadStore(tmp_path, max_bytes=1024, quota_bytes=10_000)
    (tmp_path / ("a" * 32)).write_bytes(b"x" * 100)
    count = store.sweep

    def sweep_while_a_chunk_arrives(**limits: float) -> Any:
        swept = count(**limits)
        store.reserve(7)  # a chunk reserved while the directory was being counted
        return swept

    monkeypatch.setattr(store, "sweep", sweep_while_a_chunk_arrives)
    swept = await store.sweep_and_recount(ttl_seconds=3600, stale_seconds=3600)
    assert swept.bytes_held == 100
    assert store.bytes_held == 107
