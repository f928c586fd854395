"""The OpenAI Realtime API (GA) events, both directions, sans-I/O."""
