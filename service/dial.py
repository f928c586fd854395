"""`voice dial sip:USER@HOST[:PORT]`: place one outbound call that the assistant
speaks on (optionally opening with a greeting), print the conversation, and return
when either side hangs up."""

from __future__ import annotations

import asyncio
import logging
import signal

from pipelines.providers.registry import load_models
from transports.sip.bridge import SipBridge
from voice.events import Event, ResponseDone, TranscriptFinal, TurnLatency
from voice.settings import Settings

log = logging.getLogger(__name__)


def print_event(event: Event) -> None:
    if isinstance(event, TranscriptFinal):
        print(f"callee:    {event.text}", flush=True)
    elif isinstance(event, ResponseDone):
        print(f"assistant: {event.text}", flush=True)
    elif isinstance(event, TurnLatency):
        stages = ", ".join(f"{k.removesuffix('_ms')} {v:.0f}" for k, v in event.stages.items())
        print(f"latency:   {stages} ms", flush=True)


async def dial(settings: Settings, target: str, greeting: str, answer_timeout: float) -> int:
    from service.local_llm import start_local_llm

    settings, local_llm = await start_local_llm(settings)
    try:
        return await _dial(settings, target, greeting, answer_timeout)
    finally:
        if local_llm is not None:
            await local_llm.stop()


async def _dial(settings: Settings, target: str, greeting: str, answer_timeout: float) -> int:
    from service.server import Service

    models = await asyncio.to_thread(load_models, settings)
    service = Service(settings, models)  # for its pipeline table; nothing else is started
    bridge = SipBridge(settings, service.pipeline_factory, service.clock)
    await bridge.start(port=settings.sip_port)
    try:
        print(f"calling {target} from udp:{settings.host}:{bridge.endpoint.local_address[1]}",
              flush=True)
        call = await bridge.dial(target, greeting, answer_timeout=answer_timeout,
                                 on_event=print_event)
        print("answered", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ended = asyncio.create_task(call.ended.wait(), name="dial-call-ended")
        stopped = asyncio.create_task(stop.wait(), name="dial-stop")
        await asyncio.wait([ended, stopped], return_when=asyncio.FIRST_COMPLETED)
        for task in (ended, stopped):
            task.cancel()
        if not call.ended.is_set():
            await call.hangup("stopped by the user")
        print(f"call ended: {call.end_reason}", flush=True)
        return 0
    finally:
        await bridge.stop()
