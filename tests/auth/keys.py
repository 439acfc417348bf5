"""Keys and tokens for the access-control tests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SECRET = "a-test-secret-long-enough-for-every-hmac-algorithm-up-to-hs512-x"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_jwks(path: Path, keys: dict[str, rsa.RSAPrivateKey]) -> None:
    """A JWKS document with the public halves of ``keys``, by kid."""
    entries = []
    for kid, key in keys.items():
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwk.update(kid=kid, alg="RS256", use="sig")
        entries.append(jwk)
    path.write_text(json.dumps({"keys": entries}))


def token(
    key: Any = SECRET,
    *,
    sub: str | None = "alice",
    grant: dict[str, Any] | None = None,
    ttl: float = 3600,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A token for ``sub`` with ``grant`` as its triorelay claim, valid for ``ttl`` seconds."""
    payload: dict[str, Any] = {"exp": int(time.time() + ttl), **claims}
    if sub is not None:
        payload["sub"] = sub
    if grant is not None:
        payload["triorelay"] = grant
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def unsigned(**claims: Any) -> str:
    """A token with ``alg: none``."""
    payload = {"sub": "mallory", "exp": int(time.time() + 3600), **claims}
    return jwt.encode(payload, None, algorithm="none")
