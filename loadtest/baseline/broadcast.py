"""The asyncio fan-out side: the ``ConnectionManager`` of FastAPI's WebSockets tutorial.

The tutorial's broadcast loop, kept as written there::

    for connection in self.active_connections:
        await connection.send_text(message)

served the way its users serve it (FastAPI on uvicorn[standard]). Against it, ``fanout``
compares deliveries with deliveries: every consumer gets every message, as with triorelay
(the queue baseline, :mod:`loadtest.baseline.app`, gives each message to one consumer).

Adapted only to the generator's endpoints: consumers (``/ws/consumer``) join the manager and
only receive; producers (``/ws/producer``) send, and each message goes back to its producer
(``send_personal_message``, the echo the generator counts as an ack, as the tutorial answers
the sender first) and then, unchanged, to every consumer. Producers are not in the list (the
tutorial's chat puts everyone in it).

Do not "fix" this module: its flaws are what the asyncio side measures. The list is global,
made at import time; a message reaches the consumers one ``await`` after the other, so one
slow consumer holds up the producer and every consumer after it (and the producer's next
message); nothing is bounded; a send to a consumer that has just gone raises out of the
producer's handler and ends the producer's connection.
"""

from __future__ import annotations

from fastapi import FastAPI, WebSocket, WebSocketDisconnect


class ConnectionManager:
    """The tutorial's manager: the connected consumers, and a loop that sends to each."""

    def __init__(self) -> None:
        self.active_connections: list[WebSocket] = []

    async def connect(self, websocket: WebSocket) -> None:
        """Accept ``websocket`` and add it to the list."""
        await websocket.accept()
        self.active_connections.append(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        """Remove ``websocket`` from the list."""
        self.active_connections.remove(websocket)

    async def send_personal_message(self, message: str, websocket: WebSocket) -> None:
        """Send ``message`` to ``websocket`` alone."""
        await websocket.send_text(message)

    async def broadcast(self, message: str) -> None:
        """Send ``message`` to every connection in the list, one after the other."""
        for connection in self.active_connections:
            await connection.send_text(message)


app = FastAPI()
manager = ConnectionManager()


@app.websocket("/ws/producer")
async def producer(websocket: WebSocket) -> None:
    """Receive text messages; echo each one to the producer, then broadcast it."""
    await websocket.accept()
    try:
        while True:
            data = await websocket.receive_text()
            await manager.send_personal_message(data, websocket)
            await manager.broadcast(data)
    except WebSocketDisconnect:
        pass


@app.websocket("/ws/consumer")
async def consumer(websocket: WebSocket) -> None:
    """Join the broadcast list until the consumer leaves."""
    await manager.connect(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        manager.disconnect(websocket)
