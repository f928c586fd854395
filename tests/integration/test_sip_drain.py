"""A draining SIP bridge (SIGTERM): balancer probes and new calls get 503 with
Retry-After, while a call already in progress goes on."""

from __future__ import annotations

import pytest

from clients.sip_client import SipPhone
from tests.integration.test_sip_bridge import SDP, exchange, invite, running_bridge, target

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_a_draining_bridge_refuses_new_calls_and_probes_but_keeps_its_calls() -> None:
    async with running_bridge() as (bridge, stubs):
        (options,) = await exchange(bridge, invite(method="OPTIONS", call_id="probe-1"))
        assert options.status == 200
        phone = SipPhone(target(bridge), events=False)
        await phone.connect()
        try:
            bridge.draining = True
            (options,) = await exchange(bridge, invite(method="OPTIONS", call_id="probe-2"))
            assert options.status == 503 and options.headers.get("Retry-After") == "30"
            responses = await exchange(bridge, invite(body=SDP, call_id="late-1"))
            assert [r.status for r in responses] == [503]
            assert responses[0].headers.get("Retry-After") == "30"
            await phone.stream_silence(1.0)  # the call in progress still flows
            assert not phone.closed
        finally:
            await phone.close()
        (pipeline,) = stubs.made
        assert pipeline.samples >= 8000 * 0.8
