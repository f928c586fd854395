"""RTP (RFC 3550) packets, RFC 4733 DTMF events, G.711, the jitter buffer and one
call's RTP stream, sans-I/O."""
