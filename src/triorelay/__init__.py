"""triorelay: a WebSocket relay from producers to consumers on Trio.

The layers, from the inside out:

- :mod:`triorelay.hub`: channels, fan-out and queue delivery, the slow-consumer policies. No I/O.
- :mod:`triorelay.brokers`: how a published message reaches the hubs (in-memory by default).
- :mod:`triorelay.routes`: thin WebSocket and HTTP handlers; errors become close codes or statuses.
- :mod:`triorelay.app`: ``create_app(settings)`` builds the Quart-Trio app that ties them together.
- :mod:`triorelay.server`: ``serve(settings)`` runs it on Hypercorn with signal handling.
"""

__version__ = "0.1.0"
