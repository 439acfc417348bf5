"""triorelay load generator: open-loop WebSocket load scenarios, the asyncio baseline server, and
the comparison of the two.

Layout:

* I/O-free core, unit-tested synchronously: :mod:`loadtest.codec` (message format),
  :mod:`loadtest.schedule` (open-loop send times, rate steps), :mod:`loadtest.stats` (latency
  histograms and counters that merge across processes), :mod:`loadtest.report` (result JSON),
  :mod:`loadtest.replay` (the ``triorelay.v1`` frames a resume reads, and their check).
* Thin I/O layers: :mod:`loadtest.clients` (trio-websocket clients, and what every client
  shares), :mod:`loadtest.lean` (a lean wsproto client: the batched sender and a stalled
  raw-socket reader), :mod:`loadtest.monitor` (psutil CPU/RSS sampling),
  :mod:`loadtest.engine` and :mod:`loadtest.workers` (one run over this process and worker
  processes), :mod:`loadtest.scenarios`, :mod:`loadtest.connections` and
  :mod:`loadtest.resume` (the scenarios),
  :mod:`loadtest.limits` (open files) and :mod:`loadtest.cli` (``python -m loadtest``).
* :mod:`loadtest.baseline`: the FastAPI/uvicorn relay users run today.
* :mod:`loadtest.compare`: ``python -m loadtest compare``, which runs the generator against
  fresh servers and reports on it; of the generator only :mod:`loadtest.cli` imports it (for
  the ``compare`` command).
"""
