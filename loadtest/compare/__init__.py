"""``python -m loadtest compare``: triorelay against the asyncio baseline, and through Redis.

Not part of the load generator: this package starts fresh servers, runs the generator against
them (``python -m loadtest SCENARIO ...`` as a subprocess), and turns the result JSONs into a
report. See :mod:`loadtest.compare.runner`.
"""
