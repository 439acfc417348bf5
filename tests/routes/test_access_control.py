"""Access control on a real relay: rights on every endpoint, tokens, origins, limits."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.auth.keys import SECRET, public_pem, rsa_key, token, unsigned
from tests.conftest import StartRelay, make_settings
from tests.helpers import RunningRelay, refused_upgrade, wait_until
from tests.routes.asgi_client import asgi_relay, asgi_websocket
from tests.upstream import reply_prefixed, start_upstream
from triorelay.errors import CloseCode

EVERYTHING = {
    "channels": {"*": ["publish", "subscribe"]},
    "rights": ["admin", "upload", "download", "echo", "proxy:default"],
}
QUEUES = {"jobs.*": {"mode": "queue"}}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "triorelay.access"]


def bearer(jwt: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {jwt}")]


@pytest.fixture
async def secured(start_relay: StartRelay, nursery: trio.Nursery) -> RunningRelay:
    """A relay that requires tokens (HMAC), with a queue rule and a proxy upstream."""
    upstream = await start_upstream(nursery, reply_prefixed)
    return await start_relay(
        auth_hmac_secret=SECRET,
        auth_leeway_seconds=0,
        channels=QUEUES,
        proxy_upstreams={"default": upstream.url},
    )


WEBSOCKET_RIGHTS = [
    ("/ws/producer/a.x", {"channels": {"a.*": ["publish"]}}),
    ("/ws/consumer/a.x", {"channels": {"a.*": ["subscribe"]}}),
    ("/ws/consumer/jobs.x", {"channels": {"jobs.*": ["subscribe"]}}),
    ("/ws/producer", {"channels": {"default": ["publish"]}}),
    ("/ws/echo", {"rights": ["echo"]}),
    ("/ws", {"rights": ["echo"]}),
    ("/ws/upload", {"rights": ["upload"]}),
    ("/ws/proxy/default", {"rights": ["proxy:default"]}),
]


@pytest.mark.parametrize(("path", "grant"), WEBSOCKET_RIGHTS)
async def test_each_websocket_path_needs_its_right(
    secured: RunningRelay, path: str, grant: dict[str, Any]
) -> None:
    """Without a token 401, with a token lacking the right 403, with the right it opens."""
    status, body = await refused_upgrade(secured.port, path)
    assert status == 401, body
    assert b"a token is needed" in body
    wrong = token(grant={"channels": {"b.*": ["publish", "subscribe"]}})
    status, body = await refused_upgrade(secured.port, path, bearer(wrong))
    assert status == 403, body
    assert wrong.encode() not in body
    async with secured.websocket(path, extra_headers=bearer(token(grant=grant))) as ws:
        assert not ws.closed


async def test_a_token_for_one_pattern_cannot_touch_another_channel(secured: RunningRelay) -> None:
    """A token for a.* publishes and reads a.x, and is refused on b.x over WebSocket and HTTP."""
    jwt = token(grant={"channels": {"a.*": ["publish", "subscribe"]}})
    for path in ("/ws/producer/b.x", "/ws/consumer/b.x"):
        assert (await refused_upgrade(secured.port, path, bearer(jwt)))[0] == 403
    headers = dict(bearer(jwt))
    refused = await secured.http.post("/channels/b.x/messages", content=b"x", headers=headers)
    assert refused.status_code == 403
    async with secured.websocket("/ws/consumer/a.x", extra_headers=bearer(jwt)) as consumer:
        published = await secured.http.post("/channels/a.x/messages", content=b"m", headers=headers)
        assert published.status_code == 202
        assert await consumer.get_message() == b"m"


@pytest.mark.parametrize(
    ("request_", "right"),
    [
        (("POST", "/channels/a.x/messages"), {"channels": {"a.*": ["publish"]}}),
        (("GET", "/channels"), {"rights": ["admin"]}),
        (("GET", "/channels/a.x"), {"rights": ["admin"]}),
        (("GET", "/files/" + "0" * 32), {"rights": ["download"]}),
    ],
)
async def test_each_http_endpoint_needs_its_right(
    secured: RunningRelay, request_: tuple[str, str], right: dict[str, Any]
) -> None:
    """Without a token 401, without the right 403; with it, the endpoint's own answer."""
    method, path = request_
    assert (await secured.http.request(method, path, content=b"x")).status_code == 401
    other = dict(bearer(token(grant={"rights": ["echo"]})))
    assert (
        await secured.http.request(method, path, content=b"x", headers=other)
    ).status_code == 403
    allowed = dict(bearer(token(grant=right)))
    answer = await secured.http.request(method, path, content=b"x", headers=allowed)
    assert answer.status_code in (200, 202, 404)  # 404: no such live channel or file


async def test_healthz_details_are_for_admin_only(secured: RunningRelay) -> None:
    """/healthz answers anyone with the status alone, and admin callers with the details."""
    anonymous = await secured.http.get("/healthz")
    assert anonymous.status_code == 200
    assert anonymous.json() == {"status": "ok"}
    admin = await secured.http.get("/healthz", headers=dict(bearer(token(grant=EVERYTHING))))
    assert admin.json()["broker"]["kind"] == "memory"
    assert "channels" in admin.json()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: token(grant=EVERYTHING, ttl=-10), b"expired"),
        (lambda: token(grant=EVERYTHING, nbf=int(time.time()) + 600), b"not yet valid"),
        (lambda: token(SECRET.upper(), grant=EVERYTHING), b"bad signature"),
        (lambda: unsigned(triorelay=EVERYTHING), b"algorithm not accepted"),
        (lambda: token(grant=EVERYTHING, aud="someone-else"), b"wrong audience"),
    ],
)
async def test_invalid_tokens_are_refused_with_401_and_the_reason(
    start_relay: StartRelay, make: Any, reason: bytes
) -> None:
    """Expired, not yet valid, wrongly signed, alg none, wrong audience: 401, reason, no token."""
    relay = await start_relay(auth_hmac_secret=SECRET, auth_leeway_seconds=0, auth_audience="me")
    bad = make()
    status, body = await refused_upgrade(relay.port, "/ws/consumer/a.x", bearer(bad))
    assert status == 401
    assert reason in body
    assert bad.encode() not in body


async def test_hs256_with_the_rsa_public_key_is_refused(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    """A relay keyed with an RSA public key refuses an HS256 token signed with that key."""
    import base64
    import hashlib
    import hmac

    key = rsa_key()
    pem = tmp_path / "public.pem"
    pem.write_bytes(public_pem(key))
    relay = await start_relay(auth_public_key_file=pem)

    def b64(value: Any) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signed = f"{b64({'alg': 'HS256'})}.{b64({'sub': 'm', 'exp': time.time() + 60})}"
    forged = f"{signed}.{b64(hmac.new(pem.read_bytes(), signed.encode(), hashlib.sha256).digest())}"
    status, body = await refused_upgrade(relay.port, "/ws/consumer/a.x", bearer(forged))
    assert status == 401
    assert b"algorithm not accepted" in body
    good = token(key, algorithm="RS256", grant=EVERYTHING)
    async with relay.websocket("/ws/consumer/a.x", extra_headers=bearer(good)) as ws:
        assert not ws.closed


async def test_tokens_travel_in_the_query_and_in_a_cookie_and_never_reach_a_log(
    start_relay: StartRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """?token= and the configured cookie carry a token; no log line shows it."""
    relay = await start_relay(auth_hmac_secret=SECRET, auth_cookie_name="relay_token")
    jwt = token(grant=EVERYTHING)
    with caplog.at_level(logging.DEBUG):
        async with relay.websocket(f"/ws/echo?token={jwt}") as echo:
            await echo.send_message("hi")
            assert await echo.get_message() == "hi"
        cookie = [("Cookie", f"other=1; relay_token={jwt}")]
        async with relay.websocket("/ws/echo", extra_headers=cookie) as echo:
            await echo.send_message("hi")
            assert await echo.get_message() == "hi"
        status, _ = await refused_upgrade(relay.port, f"/ws/echo?token={jwt}x")
        assert status == 401
        await wait_until(lambda: len(access_lines(caplog)) >= 2)
    # The relay's and Hypercorn's records (trio-websocket, the test's client, logs its URL).
    served = [r for r in caplog.records if r.name.startswith(("triorelay", "hypercorn"))]
    assert len(served) >= 2
    for record in served:
        assert jwt not in record.getMessage()


async def test_the_access_log_has_one_line_per_connection(
    secured: RunningRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """When a connection ends: address, sub, path, role, channel, counts and close code."""
    jwt = token(sub="carol", grant={"channels": {"a.*": ["publish"]}})
    with caplog.at_level(logging.INFO, logger="triorelay.access"):
        async with secured.websocket("/ws/producer/a.x?ack=none", extra_headers=bearer(jwt)) as ws:
            await ws.send_message("12345")
        line = await wait_until(
            lambda: next(
                (r.getMessage() for r in caplog.records if "sub=carol" in r.getMessage()), None
            )
        )
    assert line.startswith("127.0.0.1 sub=carol path=/ws/producer/a.x role=producer channel=a.x")
    assert "in=1/5B" in line
    assert jwt not in line


async def test_a_connection_is_closed_when_its_token_expires(secured: RunningRelay) -> None:
    """Real clock: a consumer and a producer with a 1.5 s token are closed with 4401 at exp."""
    jwt = token(grant={"channels": {"a.*": ["publish", "subscribe"]}}, ttl=1.5)
    with trio.fail_after(10):
        async with (
            secured.websocket("/ws/consumer/a.x", extra_headers=bearer(jwt)) as consumer,
            secured.websocket("/ws/producer/a.x", extra_headers=bearer(jwt)) as producer,
        ):
            for ws in (consumer, producer):
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == CloseCode.TOKEN_EXPIRED
                assert closed.value.reason.reason == "token expired"


async def test_a_refreshed_token_keeps_the_connection_open(autojump_clock: trio.abc.Clock) -> None:
    """Autojump clock: a refresh before exp moves the close to the new token's exp."""
    settings = make_settings(auth_hmac_secret=SECRET, auth_leeway_seconds=0)
    grant = {"channels": {"a.*": ["subscribe"]}}
    started = trio.current_time()
    async with asgi_relay(settings) as (app, _relay):
        first = token(grant=grant, ttl=60)
        async with asgi_websocket(app, "/ws/consumer/a.x", query=f"token={first}".encode()) as ws:
            assert (await ws.answer())["type"] == "websocket.accept"
            await trio.sleep(30)
            fresh = token(grant=grant, ttl=60)
            await ws.send_text(json.dumps({"triorelay": "refresh", "token": fresh}))
            with trio.fail_after(120):
                close = await ws.answer()
            assert close == {"type": "websocket.close", "code": 4401, "reason": "token expired"}
            # Closed at the refreshed token's exp (about 30 + 60 s), not at the first's (60 s).
            assert 85 <= trio.current_time() - started <= 95


async def test_a_refresh_with_a_bad_token_or_fewer_rights_closes(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An invalid refresh token closes with 4401, one without the right with 4403."""
    settings = make_settings(auth_hmac_secret=SECRET)
    grant = {"channels": {"a.*": ["subscribe"]}}
    async with asgi_relay(settings) as (app, _relay):
        for refresh, code in (
            (token(ttl=-100, grant=grant), 4401),
            (token(grant={"channels": {"b.*": ["subscribe"]}}), 4403),
            (token(sub="someone-else", grant=grant), 4403),
        ):
            query = f"token={token(grant=grant)}".encode()
            async with asgi_websocket(app, "/ws/consumer/a.x", query=query) as ws:
                assert (await ws.answer())["type"] == "websocket.accept"
                await ws.send_text(json.dumps({"triorelay": "refresh", "token": refresh}))
                with trio.fail_after(10):
                    close = await ws.answer()
                assert (close["type"], close["code"]) == ("websocket.close", code)


ORIGIN_PATHS = ["/ws/producer/a.x", "/ws/consumer/a.x", "/ws/echo", "/ws", "/ws/upload"]


@pytest.mark.parametrize("path", [*ORIGIN_PATHS, "/ws/proxy/default"])
async def test_cross_origin_handshakes_are_refused(secured: RunningRelay, path: str) -> None:
    """Origin: https://evil.example gets 403 on every WebSocket path, token or not."""
    headers = [("Origin", "https://evil.example"), *bearer(token(grant=EVERYTHING))]
    status, body = await refused_upgrade(secured.port, path, headers)
    assert status == 403
    assert b"origin" in body


async def test_cross_origin_publish_over_http_is_refused(secured: RunningRelay) -> None:
    """A text/plain POST from another origin is refused; a GET of /healthz is not."""
    headers = {"Origin": "https://evil.example", **dict(bearer(token(grant=EVERYTHING)))}
    answer = await secured.http.post(
        "/channels/a.x/messages", content=b"x", headers={**headers, "Content-Type": "text/plain"}
    )
    assert answer.status_code == 403
    assert (await secured.http.get("/healthz", headers=headers)).status_code == 200


async def test_same_origin_no_origin_and_allowlisted_origins_pass(start_relay: StartRelay) -> None:
    """The relay's own origin, no Origin at all, and an allowed origin open the connection."""
    relay = await start_relay(allowed_origins=["https://app.example.com", "https://*.example.org"])
    for origin in (
        f"http://127.0.0.1:{relay.port}",
        None,
        "https://app.example.com",
        "https://x.example.org",
    ):
        headers = [("Origin", origin)] if origin else []
        async with relay.websocket("/ws/echo", extra_headers=headers) as echo:
            await echo.send_message("ok")
            assert await echo.get_message() == "ok"
    assert (await refused_upgrade(relay.port, "/ws/echo", [("Origin", "null")]))[0] == 403


@pytest.mark.parametrize("allow_anonymous", [False, True])
async def test_without_a_key_anonymous_clients_are_served_on_loopback_only(
    allow_anonymous: bool,
) -> None:
    """A client from a non-loopback address gets 403 naming the setting, unless
    TRIORELAY_ALLOW_ANONYMOUS=true; a loopback one is served either way."""
    settings = make_settings(allow_anonymous=allow_anonymous)
    async with asgi_relay(settings) as (app, _relay):
        async with asgi_websocket(app, "/ws/echo", client=("192.0.2.7", 40000)) as ws:
            answer = await ws.answer()
            if allow_anonymous:
                assert answer["type"] == "websocket.accept"
            else:
                assert answer == {
                    "type": "websocket.http.response.start",
                    "status": 403,
                    "headers": answer["headers"],
                }
                body = (await ws.answer())["body"]
                assert b"TRIORELAY_ALLOW_ANONYMOUS" in body
        async with asgi_websocket(app, "/ws/echo", client=("127.0.0.2", 40000)) as ws:
            assert (await ws.answer())["type"] == "websocket.accept"


async def test_with_a_key_anonymous_clients_get_the_anonymous_rule(start_relay: StartRelay) -> None:
    """auth_anonymous grants subscribe on public.*: anonymous clients read it, nothing else."""
    relay = await start_relay(
        auth_hmac_secret=SECRET, auth_anonymous={"channels": {"public.*": ["subscribe"]}}
    )
    async with relay.websocket("/ws/consumer/public.news") as consumer:
        assert not consumer.closed
    assert (await refused_upgrade(relay.port, "/ws/producer/public.news"))[0] == 401
    assert (await refused_upgrade(relay.port, "/ws/consumer/private.x"))[0] == 401


async def test_connections_per_client_and_in_total_are_bounded(start_relay: StartRelay) -> None:
    """At the per-client limit the next connection of that client gets 503, others pass; at
    the total limit everyone's next one does."""
    relay = await start_relay(
        auth_hmac_secret=SECRET, max_connections_per_client=2, max_connections=3
    )
    alice, bob = token(sub="alice", grant=EVERYTHING), token(sub="bob", grant=EVERYTHING)
    async with (
        relay.websocket("/ws/consumer/a.x", extra_headers=bearer(alice)),
        relay.websocket("/ws/consumer/a.x", extra_headers=bearer(alice)),
    ):
        status, body = await refused_upgrade(relay.port, "/ws/consumer/a.x", bearer(alice))
        assert (status, b"this client" in body) == (503, True)
        async with relay.websocket("/ws/echo", extra_headers=bearer(bob)) as echo:
            await echo.send_message("bob carries on")
            assert await echo.get_message() == "bob carries on"
            status, body = await refused_upgrade(relay.port, "/ws/echo", bearer(bob))
            assert (status, b"the relay holds" in body) == (503, True)
    async with relay.websocket("/ws/consumer/a.x", extra_headers=bearer(alice)) as again:
        assert not again.closed  # released when they closed


async def test_a_producer_past_its_publish_rate_is_closed_and_others_carry_on(
    start_relay: StartRelay,
) -> None:
    """Past publish_rate_messages_per_second the producer gets 1008; another one publishes."""
    relay = await start_relay(publish_rate_messages_per_second=5)
    async with (
        relay.websocket("/ws/producer/r?ack=none") as fast,
        relay.websocket("/ws/producer/r") as polite,
    ):

        async def flood() -> None:
            for i in range(20):  # a burst of a second's worth passes, then the rate is over
                await fast.send_message(f"m{i}")
            await fast.get_message()

        with pytest.raises(ConnectionClosed) as closed:
            await flood()
        assert closed.value.reason.code == CloseCode.POLICY_VIOLATION
        assert "rate limit" in (closed.value.reason.reason or "")
        await polite.send_message("still fine")
        assert await polite.get_message() == "still fine"


async def test_the_start_up_log_says_which_mode_is_active(
    start_relay: StartRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay logs whether tokens are required or anonymous clients are served."""
    with caplog.at_level(logging.INFO, logger="triorelay.relay"):
        await start_relay()
        await start_relay(auth_hmac_secret=SECRET)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("access: ")]
    assert lines == [
        "access: no key configured: anonymous clients from loopback addresses only",
        "access: tokens required; anonymous clients get auth_anonymous's rights",
    ]


def test_the_token_command_mints_what_the_relay_accepts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """triorelay token prints a token with the rights asked for, signed with the secret."""
    import jwt as pyjwt

    from triorelay.cli import main

    monkeypatch.setenv("TRIORELAY_AUTH_HMAC_SECRET", SECRET)
    assert main(["token", "--sub", "dev", "--publish", "a.*", "--right", "admin"]) == 0
    minted = capsys.readouterr().out.strip()
    claims = pyjwt.decode(minted, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "dev"
    assert claims["triorelay"] == {"channels": {"a.*": ["publish"]}, "rights": ["admin"]}
    assert main(["token", "--sub", "dev", "--right", "root"]) == 2
    monkeypatch.delenv("TRIORELAY_AUTH_HMAC_SECRET")
    assert main(["token", "--sub", "dev"]) == 2
    assert "TRIORELAY_AUTH_HMAC_SECRET" in capsys.readouterr().err


async def test_a_consumer_refreshes_its_token_on_the_fast_path(secured: RunningRelay) -> None:
    """Over a real socket (Hypercorn's reader delivers), a refresh moves the expiry."""
    grant = {"channels": {"a.*": ["subscribe"]}}
    async with secured.websocket(
        "/ws/consumer/a.x", extra_headers=bearer(token(grant=grant, ttl=5))
    ) as ws:
        (consumer,) = [c for c in secured.relay.hub._connections if c.role == "consumer"]
        assert consumer.cancel_scope is not None
        first = consumer.cancel_scope.deadline
        assert first < trio.current_time() + 6
        await ws.send_message(json.dumps({"triorelay": "refresh", "token": token(grant=grant)}))
        await wait_until(lambda: consumer.cancel_scope.deadline > first + 3000)
        assert not ws.closed


@pytest.mark.parametrize(
    "form",
    [
        '{{"token": "{token}", "triorelay": "refresh"}}',  # JSON.stringify's order, say
        '{{ "triorelay" : "refresh", "token": "{token}" }}',
        ' {{"triorelay":"refresh","token":"{token}"}}',
    ],
)
async def test_a_refresh_in_any_key_order_is_taken_not_published(
    secured: RunningRelay, form: str
) -> None:
    """A producer's refresh with its keys in another order, or spaced, is a refresh all the
    same: its expiry moves and the message, which holds a token, is not published (it was,
    to every subscriber, unless it began exactly with {"triorelay")."""
    grant = {"channels": {"a.*": ["publish", "subscribe"]}}
    async with (
        secured.websocket("/ws/consumer/a.x", extra_headers=bearer(token(grant=grant))) as sub,
        secured.websocket(
            "/ws/producer/a.x?ack=none", extra_headers=bearer(token(grant=grant, ttl=5))
        ) as producer,
    ):
        (connection,) = [c for c in secured.relay.hub._connections if c.role == "producer"]
        assert connection.cancel_scope is not None
        first = connection.cancel_scope.deadline
        await producer.send_message(form.format(token=token(grant=grant)))
        await producer.send_message("after the refresh")
        assert await sub.get_message() == "after the refresh"
        assert connection.cancel_scope.deadline > first + 3000


@pytest.mark.parametrize(
    "header",
    [
        (b"x-forwarded-for", b"203.0.113.9"),
        (b"forwarded", b"for=203.0.113.9"),
        (b"x-real-ip", b"203.0.113.9"),
        (b"via", b"1.1 proxy"),
        (b"x-forwarded-host", b"relay.example.com"),
    ],
)
async def test_without_a_key_a_forwarded_request_is_not_local(header: tuple[bytes, bytes]) -> None:
    """Without a key, a request from 127.0.0.1 with a loopback Host that a proxy forwarded
    (nginx sends Host: 127.0.0.1:8000 unless told otherwise) is refused with 403: the proxy's
    clients are the internet's, not local ones. The same request without the header passes."""
    settings = make_settings()
    async with asgi_relay(settings) as (app, _relay):
        async with asgi_websocket(app, "/ws/echo", headers=[header]) as ws:
            answer = await ws.answer()
            assert (answer["type"], answer["status"]) == ("websocket.http.response.start", 403)
            assert b"TRIORELAY_ALLOW_ANONYMOUS" in (await ws.answer())["body"]
        async with asgi_websocket(app, "/ws/echo") as ws:
            assert (await ws.answer())["type"] == "websocket.accept"


@pytest.mark.parametrize("host", [b"evil.example:8000", b"relay.example.com"])
async def test_without_a_key_a_loopback_peer_with_a_foreign_host_is_not_local(host: bytes) -> None:
    """Without a key, a peer on 127.0.0.1 whose Host names another machine (a proxy in front,
    or a DNS-rebinding page) is refused with 403, like a remote client; a local Host passes."""
    settings = make_settings()
    async with asgi_relay(settings) as (app, _relay):
        async with asgi_websocket(app, "/ws/echo", host=host) as ws:
            answer = await ws.answer()
            assert (answer["type"], answer["status"]) == ("websocket.http.response.start", 403)
            assert b"TRIORELAY_ALLOW_ANONYMOUS" in (await ws.answer())["body"]
        for local in (b"localhost:8000", b"[::1]:8000", b"127.0.0.1"):
            async with asgi_websocket(app, "/ws/echo", host=local) as ws:
                assert (await ws.answer())["type"] == "websocket.accept"
