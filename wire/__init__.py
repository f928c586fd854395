"""Sans-I/O wire formats and protocol state machines: bytes and `now` in, typed values
and bytes out; no sockets, no asyncio, no clock (docs/architecture.md)."""
