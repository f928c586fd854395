"""The OpenAI-Realtime-compatible endpoint `/v1/realtime`, served by the cascade's
models (docs/realtime.md)."""
