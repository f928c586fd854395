"""The latency regression suite (`voice latency`; docs/latency.md)."""
