"""``python -m loadtest compare``: triorelay against the asyncio baseline, and through Redis.

Not part of the load generator: this package starts fresh servers, runs the generator against
them (``python -m loadtest SCENARIO ...``, a subprocess per run) and turns the result JSONs into
a report. It configures relays through their environment, named and defaulted from
:class:`triorelay.settings.Settings` (:mod:`loadtest.compare.relay`, the only import of
``triorelay``).

I/O-free, tested synchronously:

* :mod:`loadtest.compare.sides`: the names of the sides (server setups) compared;
* :mod:`loadtest.compare.relay`: triorelay's settings as environment variables and defaults;
* :mod:`loadtest.compare.plan`: what to measure (``FULL``, ``QUICK``, overrides), the jobs and
  their variants (how producers write) and run order, and the opt-in sides (``--tokens``,
  ``--history``, ``--tracing``: one ``Extra`` each, the settings, rates, table and bound);
* :mod:`loadtest.compare.aggregate`: each run's flat metrics, generator-bound runs, medians and
  ratios per table;
* :mod:`loadtest.compare.report`: what each table shows, the notes, the markdown (the opt-in
  sides' sections from one set of helpers);
* :mod:`loadtest.compare.summary`: the summary that leads the report (the headline figures
  of each variant side by side, and what limited each ``max``);
* :mod:`loadtest.compare.history`: the same for the history and resume tables (``--history``).

I/O:

* :mod:`loadtest.compare.processes`: starting servers and generator runs, CPU-pinned;
* :mod:`loadtest.compare.deployments`: the server processes of each side, and where Redis
  comes from;
* :mod:`loadtest.compare.plots`: the PNG charts;
* :mod:`loadtest.compare.runner`: the command line and the measuring loop.

The asyncio servers themselves are :mod:`loadtest.baseline` (the queue, and the broadcast
loop): the generator's scenarios run against them without ``compare`` too.
"""
