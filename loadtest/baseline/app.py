"""The baseline FastAPI application, written the way the tutorials write it.

Do not "fix" this module: its flaws (a global unbounded queue created at import time, no
backpressure, competing consumers instead of fan-out, messages lost when a consumer disconnects
between ``get`` and ``send_json``) are what the baseline measures.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()
queue: asyncio.Queue[Any] = asyncio.Queue()


@app.websocket("/ws/producer")
async def producer(ws: WebSocket) -> None:
    """Receive JSON messages, enqueue each one and echo it back to the producer."""
    await ws.accept()
    try:
        while True:
            data = await ws.receive_json()
            await queue.put(data)
            await ws.send_json(data)
    except WebSocketDisconnect:
        pass


@app.websocket("/ws/consumer")
async def consumer(ws: WebSocket) -> None:
    """Send every message taken from the global queue to this consumer."""
    await ws.accept()
    try:
        while True:
            data = await queue.get()
            await ws.send_json(data)
    except WebSocketDisconnect:
        pass
