"""The WebSocket client against a real websockets server that hangs up on it."""
from __future__ import annotations

import json

import numpy as np
from websockets.asyncio.server import ServerConnection, serve

from clients.ws_client import VoiceClient


async def test_streaming_stops_quietly_when_the_service_hangs_up_mid_stream() -> None:
    async def hang_up_after_one_frame(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "session.created", "session": {}}))
        await ws.recv()
        await ws.close(1000, "the assistant ended the call")

    async with serve(hang_up_after_one_frame, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        for _ in range(20):
            async with VoiceClient(f"http://127.0.0.1:{port}") as client:
                await client.stream(np.zeros(16000, np.int16), speed=1000.0)
                await client.wait_closed()
            assert client.close_code == 1000
            assert client.close_reason == "the assistant ended the call"
