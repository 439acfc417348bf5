"""The HTTP API: publish over HTTP, channel statistics, health.

``POST /channels/{channel}/messages``  publish the body; 202 ``{"id": N}``, 413 if too big,
                                        429 past the client's publish rate (right:
                                        ``publish`` on the channel)
``GET  /channels``                      every live channel's statistics (``admin``)
``GET  /channels/{channel}``            one channel, with its connections; 404 if not live
                                        (``admin``)
``GET  /healthz``                       200 when serving, 503 while shutting down or the
                                        broker is unavailable; the details for ``admin``
``GET  /files/{id}``                    an uploaded file (Range requests work); 404 for an
                                        unknown or malformed id (``download``)

Every request is identified first (:class:`~triorelay.auth.access.Access`); a state-changing
one (POST) from a page of another origin is refused with 403.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import dataclasses
from typing import Any
from urllib.parse import quote

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, current_app, jsonify, request, send_file
from quart_trio.wrappers.response import TrioFileBody, TrioResponse

from triorelay.auth.access import Access, Credentials, credentials_from_headers
from triorelay.auth.tokens import Identity
from triorelay.envelopes import Payload, size_of
from triorelay.errors import (
    InvalidQuery,
    InvalidText,
    MessageTooBig,
    PublishTimeout,
    RateLimited,
    RequestError,
    UnsupportedCharset,
)
from triorelay.observability.metrics import exposition
from triorelay.relay import Relay
from triorelay.tracing import Trace, now_ns, trace_id_of

blueprint = Blueprint("triorelay", __name__)


def _relay() -> Relay:
    relay: Relay = current_app.extensions["triorelay"]
    return relay


def _is_text(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime.startswith("text/") or mime == "application/json" or mime.endswith("+json")


@blueprint.errorhandler(RequestError)
async def _request_error(error: RequestError) -> tuple[Response, int]:
    _relay().counters.refusal(error.status, error.label)
    response = jsonify({"error": str(error)})
    if isinstance(error, RateLimited):
        response.headers["Retry-After"] = "1"  # the buckets hold one second's worth
    return response, error.status


def _credentials() -> Credentials:
    """What the current request presents: its token, origin, address."""
    headers = [(name.lower(), value) for name, value in request.headers.items()]
    return credentials_from_headers(
        headers, request.query_string.decode("latin-1"), request.remote_addr, _relay().settings
    )


async def _identify(credentials: Credentials | None = None) -> Identity:
    """Who sends the current request; raise Unauthorized or Forbidden."""
    credentials = credentials or _credentials()
    return await _relay().access.identify(credentials, check_origin=request.method == "POST")


@blueprint.post("/channels/<channel>/messages")
async def publish(channel: str) -> tuple[Response, int]:
    """Publish the body: text (UTF-8) for text and JSON types, binary otherwise.

    Waits at most ``publish_timeout_seconds`` for the channel to have room (a full queue, a
    ``block`` channel): then 503, and nothing is published.
    """
    relay = _relay()
    credentials = _credentials()
    identity = await _identify(credentials)
    Access.require_channel(identity, "publish", channel)
    limit = relay.settings.max_message_bytes
    body = await request.get_data(cache=False)
    assert isinstance(body, bytes)
    if len(body) > limit:
        raise MessageTooBig(f"message of {len(body)} bytes over the limit {limit}")
    client = Access.client_key(identity, credentials)
    if not relay.http_publish_rates.take(client, len(body), trio.current_time()):
        raise RateLimited(
            "publishing faster than this relay's rate limit for a client: try again later"
        )
    payload: Payload = body
    if _is_text(request.headers.get("content-type", "")):
        payload = _text(body, request.mimetype_params.get("charset", "utf-8"))
    trace_id = trace_id_of(request.headers.get("traceparent"))
    traces = {0: Trace(now_ns(), trace_id)} if trace_id is not None else None
    with relay.hub.attach_producer(channel) as producer:
        with trio.move_on_after(relay.settings.publish_timeout_seconds):
            await relay.hub.wait_for_room(channel, size_of(payload))
            published: list[int] = []
            await producer.publish_many([payload], published, traces)
            return jsonify({"id": published[0]}), 202
    raise PublishTimeout(
        f"the channel did not take the message within {relay.settings.publish_timeout_seconds} s:"
        " nothing published"
    )


def _text(body: bytes, charset: str) -> str:
    """``body`` decoded as UTF-8 (or its ASCII subset); 415 for any other charset, 400 if the
    bytes are not valid in it. Other charsets are refused: some decode to text a consumer
    cannot encode (a UTF-7 lone surrogate), some cost quadratic time (punycode)."""
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        name = ""
    if name not in ("utf-8", "ascii"):
        raise UnsupportedCharset(f"text must be UTF-8, not {charset[:32]!r}")
    try:
        return body.decode(name)
    except UnicodeDecodeError:
        raise InvalidText(f"the body is not valid {name}") from None


MAX_PAGE_CHANNELS = 1000
"""The most channels ``GET /channels`` lists at once (``?limit=``, default and maximum)."""


@blueprint.get("/channels")
async def list_channels() -> Response:
    """Live channels in name order, a page at a time: ``?limit=N&after=NAME``.

    ``next`` names the cursor of the next page (``?after=``); the last page has none.
    """
    Access.require(await _identify(), "admin")
    limit = _page_limit()
    stats = _relay().hub.statistics(after=request.args.get("after", ""), limit=limit + 1)
    more = len(stats) > limit
    page = stats[:limit]
    body: dict[str, Any] = {"channels": [dataclasses.asdict(s) for s in page]}
    if more:
        body["next"] = page[-1].name
    return jsonify(body)


@blueprint.get("/channels/<channel>")
async def show_channel(channel: str) -> tuple[Response, int]:
    """One channel's statistics and its connections', a page at a time: ``?limit=N`` (up to
    1,000) and ``?after=ID`` (the previous page's ``next``), in id order."""
    Access.require(await _identify(), "admin")
    hub = _relay().hub
    stats = hub.channel_statistics(channel)
    if stats is None:
        return jsonify({"error": f"no live channel {channel!r}"}), 404
    limit = _page_limit()
    try:
        after = int(request.args.get("after", 0))
    except ValueError:
        raise InvalidQuery("after must be a connection id") from None
    members = hub.connection_statistics(channel, after=after, limit=limit + 1)
    body: dict[str, Any] = dataclasses.asdict(stats)
    body["connections"] = [dataclasses.asdict(c) for c in members[:limit]]
    if len(members) > limit:
        body["next"] = members[limit - 1].id
    return jsonify(body), 200


def _page_limit() -> int:
    """``?limit=``: 1 to MAX_PAGE_CHANNELS (the default); else 400."""
    try:
        limit = int(request.args.get("limit", MAX_PAGE_CHANNELS))
    except ValueError:
        raise InvalidQuery("limit must be a whole number") from None
    if not 0 < limit <= MAX_PAGE_CHANNELS:
        raise InvalidQuery(f"limit must be 1 to {MAX_PAGE_CHANNELS}")
    return limit


@blueprint.get("/metrics")
async def metrics() -> Response:
    """The relay's metrics in the Prometheus text format (``admin``); under several workers,
    every worker's, each series labelled with its ``worker``."""
    Access.require(await _identify(), "admin")
    relay = _relay()
    if relay.worker_metrics is not None:  # several workers: every one's series
        body = await relay.worker_metrics.exposition()
    else:
        body = exposition(relay.metrics)
    return Response(body, status=200, content_type=CONTENT_TYPE_LATEST)


@blueprint.get("/healthz")
async def healthz() -> tuple[Response, int]:
    """The status for anyone (a load balancer has no token); the details for ``admin``."""
    relay = _relay()
    try:
        detailed = (await _identify()).grant.allows("admin")
    except RequestError:
        detailed = False
    health = relay.health()
    body: dict[str, Any] = {"status": health}
    status = 200 if health == "ok" else 503
    if detailed:
        body["broker"] = relay.hub.broker.statistics()
        body["tasks"] = relay.supervisor.statistics()
        if status == 200:
            body["channels"] = len(relay.hub)
    return jsonify(body), status


DOWNLOAD_CHUNK_BYTES = 256 * 1024
"""Bytes read per step of a download (Quart-Trio's default of 8 KiB costs two thread hops
per 8 KiB); the memory a download holds."""


class _FileBody(TrioFileBody):
    buffer_size = DOWNLOAD_CHUNK_BYTES


class FileResponse(TrioResponse):
    """The app's response class: Quart-Trio's, reading files in bigger steps."""

    file_body_class = _FileBody


@blueprint.get("/files/<file_id>")
async def download(file_id: str) -> Response | tuple[Response, int]:
    """A stored upload as ``application/octet-stream``, with its filename hint and sha256."""
    Access.require(await _identify(), "download")
    uploads = _relay().uploads
    stored = await uploads.describe(file_id)  # None for anything but a 32-hex-digit id
    path = uploads.path_of(file_id)
    if stored is None or path is None:
        return jsonify({"error": "no such file"}), 404
    response = await send_file(path, mimetype="application/octet-stream", conditional=True)
    # Quart ends every response after RESPONSE_TIMEOUT (60 s): a large file to a slow client
    # would be cut. A download holds one chunk at a time and ends when the client leaves.
    response.timeout = None
    name = stored.filename or stored.id
    plain = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    response.headers["Content-Disposition"] = (
        f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"
    )
    if stored.sha256:
        digest = base64.b64encode(binascii.unhexlify(stored.sha256)).decode()
        response.headers["Repr-Digest"] = f"sha-256=:{digest}:"
    return response
