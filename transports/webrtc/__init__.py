"""WebRTC transport (aiortc): Opus audio both ways, events on a data channel.

Signalling is a WebSocket at `/rtc` (docs/protocol.md, "WebRTC"): the server sends
its ICE servers, the client sends an SDP offer, the server answers. The socket stays
open for the call; closing it ends the call.
"""
