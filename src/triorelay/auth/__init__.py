"""Access control: tokens and their rights, the Origin check, per-client limits.

- :mod:`~triorelay.auth.grants`: the rights a token grants, per channel pattern (pure);
- :mod:`~triorelay.auth.tokens`: JWT verification with PyJWT, the identity it proves;
- :mod:`~triorelay.auth.origins`: which web pages may use the relay (pure);
- :mod:`~triorelay.auth.limits`: connections per client and in all, publish rates (pure);
- :mod:`~triorelay.auth.access`: the one decision every handshake and request goes through;
- :mod:`~triorelay.auth.redaction`: tokens never reach a log line.

The threat model and how to set it up: ``docs/how-to/secure-a-relay.md``.
"""
