"""Token verification: keys and algorithms from the settings, never from the token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt.jwk_set_cache
import pytest
import trio

from tests.auth.keys import SECRET, public_pem, rsa_key, token, unsigned, write_jwks
from triorelay.auth.tokens import TokenVerifier, _KeyFile, mint
from triorelay.errors import SettingsError, Unauthorized
from triorelay.settings import load_settings

OTHER_SECRET = SECRET.replace("a-test", "another")
GRANT = {"channels": {"a.*": ["subscribe"]}, "rights": ["admin"]}


def hmac_verifier(**overrides: Any) -> TokenVerifier:
    return TokenVerifier(load_settings(auth_hmac_secret=SECRET, **overrides))


async def refused(verifier: TokenVerifier, bad: str) -> str:
    """The reason ``bad`` is refused; it never contains the token."""
    with pytest.raises(Unauthorized) as error:
        await verifier.verify(bad)
    assert bad not in str(error.value)
    assert error.value.status == 401
    return str(error.value)


async def test_a_valid_token_gives_its_subject_rights_and_expiry() -> None:
    """A good HS256 token proves its sub, its grant and its exp."""
    identity = await hmac_verifier().verify(token(grant=GRANT, ttl=60))
    assert identity.sub == "alice"
    assert identity.grant.allows_channel("subscribe", "a.b")
    assert identity.grant.allows("admin")
    assert identity.expires_at is not None
    assert 0 < identity.expires_at - time.time() <= 60


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: token(ttl=-60), "expired"),
        (lambda: token(nbf=int(time.time()) + 600), "not yet valid"),
        (
            lambda: token("another-secret-long-enough-for-every-hmac-algorithm-up-to-hs512"),
            "bad signature",
        ),
        (lambda: token(sub=None), "'sub'"),
        (lambda: unsigned(), "algorithm not accepted"),
        (lambda: token(algorithm="HS512"), "algorithm not accepted"),
        (lambda: "not.a.token", "malformed"),
        (lambda: token(grant={"rights": ["root"]}), "unknown right"),
    ],
)
async def test_bad_tokens_are_refused_with_the_reason(make: Any, reason: str) -> None:
    """Expired, not yet valid, wrongly signed, subject-less, alg none, another algorithm."""
    assert reason in await refused(hmac_verifier(auth_leeway_seconds=0), make())


async def test_a_token_without_exp_is_refused() -> None:
    """exp is required."""
    import jwt

    bad = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    assert "'exp'" in await refused(hmac_verifier(), bad)


async def test_audience_and_issuer_are_checked_when_configured() -> None:
    """With auth_audience / auth_issuer set, a token for another one is refused."""
    verifier = hmac_verifier(auth_audience="relay", auth_issuer="https://idp.example")
    good = token(aud="relay", iss="https://idp.example")
    assert (await verifier.verify(good)).sub == "alice"
    assert "wrong audience" in await refused(
        verifier, token(aud="other", iss="https://idp.example")
    )
    assert "wrong issuer" in await refused(verifier, token(aud="relay", iss="https://evil"))


async def test_hs256_signed_with_the_rsa_public_key_is_refused(tmp_path: Path) -> None:
    """HS/RS confusion: an HMAC token keyed with the relay's public key does not pass."""
    key = rsa_key()
    pem = tmp_path / "public.pem"
    pem.write_bytes(public_pem(key))
    verifier = TokenVerifier(load_settings(auth_public_key_file=pem))
    assert (await verifier.verify(token(key, algorithm="RS256"))).sub == "alice"
    # Forged by hand: PyJWT itself refuses to sign HS256 with a PEM key.
    header = _b64({"alg": "HS256", "typ": "JWT"})
    body = _b64({"sub": "mallory", "exp": int(time.time()) + 600})
    signature = hmac.new(pem.read_bytes(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    assert "algorithm not accepted" in await refused(verifier, forged)


def test_settings_refuse_an_algorithm_that_does_not_go_with_the_key(tmp_path: Path) -> None:
    """HS256 with a public key, RS256 with a secret, or 'none' fail at start."""
    pem = tmp_path / "public.pem"
    pem.write_bytes(public_pem(rsa_key()))
    with pytest.raises(SettingsError, match="does not go with"):
        load_settings(auth_public_key_file=pem, auth_algorithms=["HS256"])
    with pytest.raises(SettingsError, match="does not go with"):
        load_settings(auth_hmac_secret=SECRET, auth_algorithms=["RS256"])
    with pytest.raises(SettingsError, match="is not one of"):
        load_settings(auth_hmac_secret=SECRET, auth_algorithms=["none"])
    with pytest.raises(SettingsError, match="one key source"):
        load_settings(auth_hmac_secret=SECRET, auth_public_key_file=pem)


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://idp.example.com/.well-known/jwks.json", True),
        ("http://127.0.0.1:8080/jwks.json", True),
        ("http://localhost/jwks.json", True),
        ("http://[::1]/jwks.json", True),
        ("http://idp.example.com/jwks.json", False),
        ("http://10.0.0.5/jwks.json", False),
        ("ftp://idp.example.com/jwks.json", False),
    ],
)
def test_a_jwks_url_must_be_https_but_on_loopback(url: str, accepted: bool) -> None:
    """A key set fetched over plain HTTP could be anyone's on the way (and every token
    signed with it would pass): refused at start, but for a loopback address."""
    if accepted:
        assert load_settings(auth_jwks_url=url).auth_jwks_url == url
    else:
        with pytest.raises(SettingsError, match="must be an https:// URL"):
            load_settings(auth_jwks_url=url)


async def test_jwks_keys_by_kid_and_a_new_kid_is_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JWKS file verifies tokens by kid; a token with a kid added later is verified after
    the set is fetched again; an unknown kid is refused."""
    first, second = rsa_key(), rsa_key()
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, {"k1": first})
    verifier = TokenVerifier(load_settings(auth_jwks_url=str(jwks)))
    assert (await verifier.verify(token(first, algorithm="RS256", headers={"kid": "k1"}))).sub
    later = token(second, algorithm="RS256", headers={"kid": "k2"})
    assert "no key" in await refused(verifier, later)
    write_jwks(jwks, {"k1": first, "k2": second})
    # The file is read again for an unknown kid, once the re-read interval has passed.
    monkeypatch.setattr(_KeyFile, "REREAD_SECONDS", 0.0)
    assert (await verifier.verify(later)).sub == "alice"


async def test_a_key_removed_from_a_jwks_url_is_refused_once_the_set_is_fetched_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key rotated out of the identity provider's set (after a leak) stops being accepted
    once the set's lifespan has passed and it is fetched again (PyJWT's per-kid cache, which
    never expires, kept it for as long as it was used)."""
    leaked, fresh = rsa_key(), rsa_key()
    bodies = [_jwks_body({"k1": leaked, "k2": fresh})]
    now = frozen_monotonic(monkeypatch)
    with jwks_endpoint(lambda: bodies[-1]) as url:
        verifier = TokenVerifier(load_settings(auth_jwks_url=url, auth_jwks_lifespan_seconds=60))
        with_leaked = token(leaked, algorithm="RS256", headers={"kid": "k1"})
        assert (await verifier.verify(with_leaked)).sub == "alice"
        bodies.append(_jwks_body({"k2": fresh}))  # k1 rotated out
        now[0] += 30
        assert (await verifier.verify(with_leaked)).sub == "alice"  # the set is still trusted
        now[0] += 31
        assert "no key" in await refused(verifier, with_leaked)
        assert (await verifier.verify(token(fresh, algorithm="RS256", headers={"kid": "k2"}))).sub


async def test_through_an_outage_of_the_issuer_the_last_key_set_serves_one_more_lifespan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issuer's JWKS endpoint fails once the set's lifespan is over: tokens are still
    verified with the last set, for one more lifespan; past it, refused as unavailable."""
    key = rsa_key()
    body = _jwks_body({"k1": key})
    failing = [False]
    now = frozen_monotonic(monkeypatch)
    with jwks_endpoint(lambda: None if failing[0] else body) as url:
        verifier = TokenVerifier(load_settings(auth_jwks_url=url, auth_jwks_lifespan_seconds=60))
        signed = token(key, algorithm="RS256", headers={"kid": "k1"})
        assert (await verifier.verify(signed)).sub == "alice"
        failing[0] = True
        now[0] += 61  # the set's lifespan is over: the fetch fails, the last set serves
        assert (await verifier.verify(signed)).sub == "alice"
        now[0] += 30
        assert (await verifier.verify(signed)).sub == "alice"
        now[0] += 40  # 131 s after the last fetch that worked: no more
        assert "key set is unavailable" in await refused(verifier, signed)


@pytest.mark.parametrize("why", ["an unknown kid", "the set's lifespan is over"])
async def test_a_known_kid_is_verified_while_a_fetch_of_the_key_set_hangs(
    monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """A verification fetches the key set from an issuer that does not answer (for a token
    with a kid the set lacks, or because the set's lifespan is over): a token whose kid the
    last set had is verified meanwhile, at once. It waited for the fetch behind the one
    verification at a time that fetches, up to auth_jwks_timeout_seconds: every handshake
    stalled with the issuer. The fetching one gets its answer once the issuer does."""
    known, new = rsa_key(), rsa_key()
    answered = threading.Event()
    bodies = [_jwks_body({"k1": known})]
    asked, release = threading.Event(), threading.Event()

    def answer() -> bytes:
        if answered.is_set():
            asked.set()
            release.wait(10)
        answered.set()
        return bodies[-1]

    now = frozen_monotonic(monkeypatch)
    with jwks_endpoint(answer) as url:
        settings = load_settings(
            auth_jwks_url=url, auth_jwks_lifespan_seconds=60, auth_jwks_timeout_seconds=20
        )
        verifier = TokenVerifier(settings)
        with_known = token(known, algorithm="RS256", headers={"kid": "k1"})
        assert (await verifier.verify(with_known)).sub == "alice"  # the first fetch
        bodies.append(_jwks_body({"k1": known, "k2": new}))
        if why == "an unknown kid":
            now[0] += 31  # past PyJWT's cooldown between two fetches for unknown kids
            fetching = token(new, algorithm="RS256", headers={"kid": "k2"})
        else:
            now[0] += 61
            fetching = with_known
        results: list[str] = []
        try:
            with trio.fail_after(15):
                async with trio.open_nursery() as nursery:

                    async def verify_fetching() -> None:
                        results.append((await verifier.verify(fetching)).sub)

                    nursery.start_soon(verify_fetching)
                    await trio.to_thread.run_sync(asked.wait, 10)
                    assert asked.is_set()
                    with trio.fail_after(2):
                        assert (await verifier.verify(with_known)).sub == "alice"
                    assert results == []  # the fetch is still under way
                    release.set()
        finally:
            release.set()
    assert results == ["alice"]


@contextmanager
def jwks_endpoint(answer: Callable[[], bytes | None]) -> Iterator[str]:
    """An HTTP JWKS endpoint on loopback, in a thread, answering each GET with what
    ``answer()`` returns (None: a 503): its URL, served while the block runs."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answer()
            if body is None:
                self.send_error(503)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def frozen_monotonic(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``time.monotonic`` (which PyJWT's set cache reads) made a list the test moves on."""
    now = [1000.0]
    monkeypatch.setattr(jwt.jwk_set_cache.time, "monotonic", lambda: now[0])
    return now


def _jwks_body(keys: dict[str, Any]) -> bytes:
    """A JWKS document of ``keys`` (by kid), as write_jwks writes it."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "jwks.json"
        write_jwks(path, keys)
        return path.read_bytes()


def test_mint_makes_a_token_the_relay_accepts() -> None:
    """triorelay token's minting function signs what the verifier accepts."""
    minted = mint(SECRET, "bob", {"rights": ["admin"]}, ttl_seconds=60)
    identity = trio.run(hmac_verifier().verify, minted)
    assert identity.sub == "bob"
    assert identity.grant.allows("admin")


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


async def test_a_jwks_url_is_fetched_with_its_kid_and_a_bounded_timeout() -> None:
    """An http(s) JWKS is fetched by PyJWT's client in a worker thread: a token with a known
    kid passes; an unreachable key set is refused with 401, not a hang."""
    key = rsa_key()
    body = _jwks_body({"k1": key})
    with jwks_endpoint(lambda: body) as url:
        verifier = TokenVerifier(load_settings(auth_jwks_url=url, auth_jwks_timeout_seconds=2))
        identity = await verifier.verify(token(key, algorithm="RS256", headers={"kid": "k1"}))
        assert identity.sub == "alice"
    unreachable = TokenVerifier(load_settings(auth_jwks_url=url, auth_jwks_timeout_seconds=1))
    with trio.fail_after(10):
        reason = await refused(unreachable, token(key, algorithm="RS256", headers={"kid": "k1"}))
    assert "key set is unavailable" in reason
