"""triorelay load generator: open-loop WebSocket load scenarios and the asyncio baseline server.

Layout:

* I/O-free core, unit-tested synchronously: :mod:`loadtest.codec` (message format),
  :mod:`loadtest.schedule` (open-loop send times, rate steps), :mod:`loadtest.stats` (latency
  histograms and counters that merge across processes), :mod:`loadtest.report` (result JSON).
* Thin I/O layers: :mod:`loadtest.clients` (trio-websocket clients, a lean wsproto sender and a
  stalled raw-socket reader), :mod:`loadtest.monitor` (psutil CPU/RSS sampling),
  :mod:`loadtest.workers` (producer processes), :mod:`loadtest.scenarios` (one module per
  scenario) and :mod:`loadtest.cli` (``python -m loadtest``).
* :mod:`loadtest.baseline`: the FastAPI/uvicorn relay users run today.
"""
