"""The session's side of the realtime pipeline's replies: provider audio into the
session's playout, `turn.latency` when a reply's first audio is sent, the local voice
for apologies and announcements, `response.done` once a reply was heard to its end,
and stopping a reply at once (what the caller heard of it)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pipelines.providers.tts import TextToSpeech
from pipelines.realtime.conversation import Conversation
from pipelines.realtime.provider_reply import ProviderReply
from pipelines.reply_engine import APOLOGY
from voice.audio import array_to_pcm16_bytes, resample
from voice.errors import ProviderError
from voice.events import ResponseDone, TurnLatency
from voice.playout import wait_until_played
from voice.session import SessionIO
from voice.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class ReplyPlayer:
    def __init__(self, io: SessionIO, tts: TextToSpeech | None, provider: str,
                 conversation: Conversation) -> None:
        self._io = io
        self._tts = tts  # speaks announcements and apologies when the provider cannot
        self._provider = provider
        self._conversation = conversation

    def add_audio(self, reply: ProviderReply, pcm: bytes) -> None:
        reply.add_provider_audio(self._io.playout, pcm, self._on_first_send(reply))

    async def play_out(self, reply: ProviderReply, apologize: bool) -> None:
        """Let the reply (and the apology, for a failed one) be heard to its end, then
        report it done."""
        playout = self._io.playout
        on_first_send = self._on_first_send(reply)
        reply.flush_audio(playout, on_first_send)
        if apologize and self._tts is not None:
            try:
                reply.enqueue(playout, await self._local_voice(APOLOGY), on_first_send)
            except ProviderError as exc:
                log.warning("turn %d: cannot speak the apology: %s", reply.turn_id, exc)
        if reply.base is not None:
            await wait_until_played(playout, playout.enqueued_samples)
        reply.finished = True
        self._conversation.remember("assistant", reply.text)
        if reply.base is not None or reply.text or apologize:
            self._io.emit(ResponseDone(turn_id=reply.turn_id, text=reply.text))
        else:
            log.info("turn %d: the provider's reply was empty", reply.turn_id)

    async def stop(self, reply: ProviderReply) -> tuple[int, str]:
        """Stop the reply's audio now: the milliseconds the caller heard, and the words
        in them."""
        reply.finished = True
        playout = self._io.playout
        played = reply.played(playout)
        playout.clear()
        if not reply.timeline.has("first_audio_out"):
            playout.on_first_send = None
        await cancel_and_wait(reply.finisher)
        return played

    async def speak(self, text: str) -> None:
        """Say `text` with the local voice (when there is one); wait until heard."""
        if self._tts is None:
            return
        playout = self._io.playout
        playout.enqueue(await self._local_voice(text))
        await wait_until_played(playout, playout.enqueued_samples)

    async def _local_voice(self, text: str) -> bytes:
        assert self._tts is not None
        samples = await self._tts.synthesize(text)
        return array_to_pcm16_bytes(resample(samples, self._tts.sample_rate,
                                             self._io.sample_rate))

    def _on_first_send(self, reply: ProviderReply) -> Callable[[int], None]:
        def first_audio_out(now_ns: int) -> None:
            reply.timeline.mark("first_audio_out", now_ns)
            log.info("%s (%s)", reply.timeline.log_line(), self._provider)
            self._io.emit(TurnLatency(turn_id=reply.turn_id, stages=reply.timeline.stages_ms(),
                                      stamps_ms=reply.timeline.relative_ms(),
                                      provider=self._provider))
        return first_audio_out

