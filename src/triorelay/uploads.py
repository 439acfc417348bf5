"""The upload store: files streamed to disk chunk by chunk, committed atomically.

An :class:`Upload` writes to a hidden temporary name in ``upload_dir`` (``.part-<id>``) and
hashes as it writes, so memory does not depend on the file's size: one chunk at a time, in a
worker thread (the event loop never waits on the disk). :meth:`Upload.commit` writes
``<id>.json`` (size, sha256, filename hint) and then renames the file to its id, atomically: a
file is visible under its id only once complete, and always with its description. Leaving the
``async with`` block without a commit (the client went away, the size limit, a checksum
mismatch, shutdown) removes the temporary file.

Ids are 32 lowercase hex digits made by the server; :meth:`UploadStore.path_of` accepts
nothing else, so no client-supplied string ever becomes a path.

The directory is bounded: all it holds together (stored files and uploads in progress) stays
under ``upload_quota_bytes``, checked before a file is created and as each chunk arrives (past
it: :class:`~triorelay.errors.StorageFull`, close 1013 ``upload storage full``, the partial
file removed). :meth:`UploadStore.sweep`, every ``upload_sweep_seconds``, removes stored files
older than ``upload_ttl_seconds`` and temporary files a dead relay left behind
(``stale_upload_seconds``), and recounts what the directory holds, so relays sharing it agree
with the disk again after each sweep.

Files are not fsynced: a completed upload is visible atomically, but a power loss may lose it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import IO

import trio

from triorelay.errors import StorageError, StorageFull, UploadMismatch, UploadTooBig

log = logging.getLogger(__name__)

_FILE_ID = re.compile(r"[0-9a-f]{32}")
_PART_PREFIX = ".part-"


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A committed upload: its id, size, sha256 and the client's filename hint."""

    id: str
    bytes: int
    sha256: str
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class Sweep:
    """What one :meth:`UploadStore.sweep` did."""

    expired: int
    stale: int
    bytes_held: int


class UploadStore:
    """Where uploads go: ``directory`` (created when first needed), at most ``max_bytes`` each,
    at most ``quota_bytes`` in all."""

    def __init__(self, directory: Path, max_bytes: int, quota_bytes: int | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.quota_bytes = quota_bytes if quota_bytes is not None else 2**63
        #: What the directory holds, as this relay counts it (recounted by each sweep).
        self.bytes_held = 0
        # Every reserve minus every release so far: what changed while a sweep counted.
        self._changes = 0

    def reserve(self, size: int) -> None:
        """Count ``size`` more bytes against the quota; raise StorageFull past it."""
        if self.bytes_held + size > self.quota_bytes:
            raise StorageFull("upload storage full")
        self.bytes_held += size
        self._changes += size

    def release(self, size: int) -> None:
        """``size`` bytes left the directory."""
        self.bytes_held = max(0, self.bytes_held - size)
        self._changes -= size

    async def sweep_and_recount(self, *, ttl_seconds: float, stale_seconds: float) -> Sweep:
        """:meth:`sweep` in a worker thread; then take its count of the directory, plus what
        this relay reserved or released while it counted (so no upload in progress is
        forgotten). Raises OSError if the directory cannot be read."""
        before = self._changes
        swept = await trio.to_thread.run_sync(
            partial(self.sweep, ttl_seconds=ttl_seconds, stale_seconds=stale_seconds)
        )
        self.bytes_held = max(0, swept.bytes_held + self._changes - before)
        return swept

    def sweep(self, *, ttl_seconds: float, stale_seconds: float) -> Sweep:
        """Remove stored files older than ``ttl_seconds`` and temporary files nothing has
        written for ``stale_seconds`` (left by a relay that died mid-upload: several relays
        may share the directory, so a file still being written is left alone); then recount
        what the directory holds (returned, not applied: see :meth:`sweep_and_recount`).
        Blocking: run it in a thread."""
        if not self.directory.is_dir():
            return Sweep(0, 0, 0)
        now = time.time()
        expired = stale = held = 0
        for path in self.directory.iterdir():
            name = path.name
            try:
                stat = path.stat()
                if name.startswith(_PART_PREFIX):
                    if stat.st_mtime < now - stale_seconds:
                        path.unlink()
                        stale += 1
                        continue
                elif _FILE_ID.fullmatch(name) and stat.st_mtime < now - ttl_seconds:
                    path.with_suffix(".json").unlink(missing_ok=True)
                    path.unlink()
                    expired += 1
                    continue
                elif name.endswith(".json") and not path.with_suffix("").exists():
                    continue  # a description whose file is gone (being committed or removed)
                held += stat.st_size
            except FileNotFoundError:
                pass  # another relay removed or committed it meanwhile
        return Sweep(expired, stale, held)

    def upload(self, filename: str | None = None) -> Upload:
        """A new upload, for ``async with``: it creates its temporary file on entry."""
        return Upload(self, filename)

    def path_of(self, file_id: str) -> Path | None:
        """The path of file ``file_id`` if it is a well-formed id (existing or not), else None."""
        if not _FILE_ID.fullmatch(file_id):
            return None
        return self.directory / file_id

    async def describe(self, file_id: str) -> StoredFile | None:
        """What is known of committed file ``file_id`` (its hint, if any), or None if absent."""
        path = self.path_of(file_id)
        if path is None:
            return None
        return await trio.to_thread.run_sync(_describe, path)


def _describe(path: Path) -> StoredFile | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    try:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    return StoredFile(
        id=path.name,
        bytes=size,
        sha256=str(meta.get("sha256", "")),
        filename=meta.get("filename") if isinstance(meta.get("filename"), str) else None,
    )


class Upload:
    """One file being received. Use as ``async with store.upload() as upload``.

    :meth:`write` each chunk in order, then :meth:`commit`. Not safe for concurrent use.
    """

    def __init__(self, store: UploadStore, filename: str | None) -> None:
        self.store = store
        self.filename = filename
        self.id = uuid.uuid4().hex
        self.bytes = 0
        self._hash = hashlib.sha256()
        self._part = store.directory / f"{_PART_PREFIX}{self.id}"
        self._file: IO[bytes] | None = None
        self._done = False

    async def __aenter__(self) -> Upload:
        if self.store.bytes_held >= self.store.quota_bytes:
            raise StorageFull("upload storage full")  # a full store takes no new file
        try:
            self._file = await trio.to_thread.run_sync(_create, self._part)
        except OSError as error:
            log.error("cannot create an upload in %s: %s", self.store.directory, error)
            raise StorageError("the upload could not be stored") from None
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            await self.discard()

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``. Raises :class:`UploadTooBig` past the limit (nothing written)."""
        if self.bytes + len(chunk) > self.store.max_bytes:
            raise UploadTooBig(f"upload over the limit of {self.store.max_bytes} bytes")
        self.store.reserve(len(chunk))  # StorageFull past the quota: the part is discarded
        file = self._file
        assert file is not None, "write() outside the async with block"
        try:
            # One thread hop writes and hashes (hashlib releases the GIL on big chunks).
            await trio.to_thread.run_sync(_write, file, self._hash, chunk)
        except OSError as error:
            self.store.release(len(chunk))
            log.error("cannot write an upload in %s: %s", self.store.directory, error)
            raise StorageError("the upload could not be stored") from None
        self.bytes += len(chunk)

    async def commit(self, expected_sha256: str | None = None) -> StoredFile:
        """Close the file and make it visible under its id; return what was stored.

        Raises :class:`UploadMismatch` when ``expected_sha256`` differs from what arrived (the
        file is then discarded on leaving the ``async with`` block).
        """
        digest = self._hash.hexdigest()
        if expected_sha256 is not None and expected_sha256 != digest:
            raise UploadMismatch(f"sha256 mismatch: declared {expected_sha256[:12]}…, got {digest}")
        stored = StoredFile(id=self.id, bytes=self.bytes, sha256=digest, filename=self.filename)
        file, self._file = self._file, None
        assert file is not None, "commit() outside the async with block"
        try:
            await trio.to_thread.run_sync(_commit, file, self._part, stored)
        except OSError as error:
            log.error("cannot commit an upload in %s: %s", self.store.directory, error)
            raise StorageError("the upload could not be stored") from None
        self._done = True
        return stored

    async def discard(self) -> None:
        """Close and remove the temporary file. Idempotent; runs even when cancelled.

        Shielded, and bounded by one local close and unlink.
        """
        if not self._done:
            self.store.release(self.bytes)
        self._done = True
        file, self._file = self._file, None
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove, file, self._part)


def _create(part: Path) -> IO[bytes]:
    part.parent.mkdir(parents=True, exist_ok=True)
    return part.open("xb")


def _write(file: IO[bytes], digest: hashlib._Hash, chunk: bytes) -> None:
    file.write(chunk)
    digest.update(chunk)


def _commit(file: IO[bytes], part: Path, stored: StoredFile) -> None:
    file.close()
    # The description first, so that a file visible under its id always has one.
    meta = _meta_part(part)
    meta.write_text(json.dumps(asdict(stored)), encoding="utf-8")
    os.replace(meta, part.with_name(f"{stored.id}.json"))
    os.replace(part, part.with_name(stored.id))


def _meta_part(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _remove(file: IO[bytes] | None, part: Path) -> None:
    if file is not None:
        file.close()
    part.unlink(missing_ok=True)
    _meta_part(part).unlink(missing_ok=True)
