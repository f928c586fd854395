"""STT, LLM and TTS providers (local and remote), their registry and fault
injection for tests."""
