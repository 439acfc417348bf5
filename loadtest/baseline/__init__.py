"""The asyncio baseline: the FastAPI + uvicorn relay that triorelay replaces.

This is deliberately the common pattern, flaws included, so that load-test comparisons are
against what users actually run today:

* one global, unbounded ``asyncio.Queue`` created at import time (:mod:`loadtest.baseline.app`);
* producers ``receive_json`` / ``put`` / ``send_json`` (echo) in a loop;
* consumers ``get`` / ``send_json`` in a loop, so consumers *compete* for messages (each message
  reaches exactly one consumer; there is no fan-out) and a message taken by a consumer that has
  just disconnected is lost.

Run it with ``python -m loadtest.baseline --host 127.0.0.1 --port 0``; see
:mod:`loadtest.baseline.__main__`.

``python -m loadtest.baseline --broadcast`` serves the asyncio fan-out side instead
(:mod:`loadtest.baseline.broadcast`): the ``ConnectionManager`` of FastAPI's WebSockets
tutorial, whose loop sends every message to every consumer, one ``await`` after the other.
"""
