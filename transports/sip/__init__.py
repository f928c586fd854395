"""SIP transport: sans-I/O cores (SIP messages, transactions, dialogs, SDP, RTP, RFC 4733
DTMF, G.711, jitter buffer, digest auth) and an asyncio UDP bridge (`bridge.py`)."""
