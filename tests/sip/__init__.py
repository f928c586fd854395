"""Helpers for the SIP tests: a SIP/RTP relay that injects loss, reordering and jitter
and records what the caller receives, and runners for sipp and baresip."""
