"""SIP transport: the asyncio side of SIP calls (the UDP endpoint and its timers, the
bridge that answers calls, one call's media socket and clock, registration, calls we
place). The sans-I/O cores it drives are in `wire.sip` and `wire.rtp`."""
