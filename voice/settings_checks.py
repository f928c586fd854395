"""The checks settings must pass before anything starts (`Settings.validate`): each
a clear message naming the setting, raised as a `ConfigError`.

`s` is a `voice.settings.Settings`; typed `Any` because that module imports this one
(an import back, even for type checking only, is a cycle the layers forbid). Every
check runs on every load, so a misspelt field fails every test at once."""

from __future__ import annotations

import re
from typing import Any

from voice.errors import ConfigError

CALL_TOOLS = ("end_call", "transfer_call", "send_dtmf")
CLIENT_SETTINGS = ("instructions", "tools", "turn_preset", "voice", "language")
STAGE_DELAYS = re.compile(r"(|(stt|llm|tts)=\d+(\.\d+)?(,(stt|llm|tts)=\d+(\.\d+)?)*)")

Checks = list[tuple[bool, str]]


def validate(s: Any) -> None:
    for ok, message in [*_service_checks(s), *_model_checks(s), *_assistant_checks(s)]:
        if not ok:
            raise ConfigError(message)
    _check_access(s)


def _service_checks(s: Any) -> Checks:
    """Turn-taking, limits, records and the transports."""
    return [
        (0 <= s.vad_aggressiveness <= 3, "vad_aggressiveness must be 0-3"),
        (s.vad_frame_ms in (10, 20, 30), "vad_frame_ms must be 10, 20 or 30"),
        (0 < s.port < 65536, "port must be 1-65535"),
        (s.min_speech_ms >= s.vad_frame_ms, "min_speech_ms below one VAD frame"),
        (s.silence_ms >= s.vad_frame_ms, "silence_ms below one VAD frame"),
        (s.turn_preset in ("default", "patient", "fixed"),
         "turn_preset must be default, patient or fixed"),
        (0 <= s.min_wait_ms <= 10000 and 0 <= s.max_wait_ms <= 10000,
         "min_wait_ms and max_wait_ms must be 0-10000"),
        (s.barge_in_pause_ms >= s.vad_frame_ms, "barge_in_pause_ms below one frame"),
        (s.max_sessions >= 1, "max_sessions must be at least 1"),
        (s.max_sessions_per_address >= 0, "max_sessions_per_address must be >= 0"),
        (0 <= s.shed_busy <= 1, "shed_busy must be between 0 and 1"),
        (s.shed_wait_ms >= 0, "shed_wait_ms must be >= 0"),
        (s.max_message_bytes >= 1024, "max_message_bytes must be at least 1024"),
        (s.idle_timeout_s > 0, "idle_timeout_s must be positive"),
        (s.max_session_s >= 0, "max_session_s must be >= 0"),
        (s.call_records_days >= 0, "call_records_days must be >= 0"),
        (not s.record_calls or bool(s.call_records_dir),
         "record_calls needs call_records_dir (the recordings go beside the records)"),
        (not s.call_records_url or s.call_records_url.startswith(
            ("http://", "https://")), "call_records_url must be an http(s) URL"),
        (s.telnyx_api_url.startswith(("http://", "https://")),
         "telnyx_api_url must be an http(s) URL"),
        (s.realtime_api_idle_timeout_s > 0, "realtime_api_idle_timeout_s must be > 0"),
        (s.llm_timeout_s > 0, "llm_timeout_s must be positive"),
        (0 <= s.sip_port < 65536, "sip_port must be 0-65535"),
        (s.sip_max_calls >= 1, "sip_max_calls must be at least 1"),
        (s.sip_rtp_timeout_s > 0, "sip_rtp_timeout_s must be positive"),
        (0 <= s.sip_jitter_ms <= 1000, "sip_jitter_ms must be 0-1000"),
        (0 <= s.sip_rtp_priority <= 99, "sip_rtp_priority must be 0-99"),
        (s.sip_register_expires >= 10, "sip_register_expires must be at least 10"),
        (s.rtc_peer_timeout_s > 0, "rtc_peer_timeout_s must be positive"),
    ]


def _model_checks(s: Any) -> Checks:
    """The pipelines, the speech models and the providers' timeouts and breakers."""
    return [
        (s.pipeline in ("cascade", "realtime"), "pipeline must be cascade or realtime"),
        (s.realtime_turn_detection in ("server_vad", "semantic_vad", "local"),
         "realtime_turn_detection must be server_vad, semantic_vad or local"),
        (s.realtime_timeout_s > 0, "realtime_timeout_s must be positive"),
        (STAGE_DELAYS.fullmatch(s.debug_stage_delay) is not None,
         "debug_stage_delay must be STAGE=MS[,STAGE=MS...], stages stt, llm, tts"),
        (s.log_format in ("text", "json"), "log_format must be text or json"),
        (0 <= s.audio_api_port < 65536, "audio_api_port must be 0-65535"),
        (not s.audio_api_port or not (s.stt_url or s.tts_url),
         "audio_api_port serves the local models: not with stt_url or tts_url"),
        (s.remote_timeout_s > 0, "remote_timeout_s must be positive"),
        (s.denoiser in ("none", "rnnoise"), "denoiser must be none or rnnoise"),
        (1 <= s.stt_beam_size <= 16, "stt_beam_size must be 1-16"),
        (1 <= s.telephone_stt_beam_size <= 16, "telephone_stt_beam_size must be 1-16"),
        (0 <= s.stt_final_beam_size <= 16, "stt_final_beam_size must be 0 (none) or 1-16"),
        (s.drain_timeout_s >= 0, "drain_timeout_s must be 0 or more"),
        (s.realtime_fallback in ("cascade", "hangup"),
         "realtime_fallback must be cascade or hangup"),
        (s.llm_first_token_timeout_s > 0, "llm_first_token_timeout_s must be positive"),
        (s.llm_reply_timeout_s > 0, "llm_reply_timeout_s must be positive"),
        (0 <= s.breaker_failure_ratio < 1, "breaker_failure_ratio must be 0-1"),
        (s.breaker_min_failures >= 1, "breaker_min_failures must be at least 1"),
        (0 < s.breaker_open_s <= s.breaker_max_open_s and s.breaker_window_s > 0,
         "breaker_open_s must be positive and at most breaker_max_open_s"),
    ]


def _assistant_checks(s: Any) -> Checks:
    """The LLM, its tools and what clients may change."""
    return [
        (s.llm in ("auto", "local", "endpoint", "echo"),
         "llm must be auto, local, endpoint or echo"),
        (s.llm != "endpoint" or bool(s.openai_base_url or s.openai_api_key),
         "llm endpoint needs OPENAI_BASE_URL or OPENAI_API_KEY"),
        (1 <= s.local_llm_threads <= 64, "local_llm_threads must be 1-64"),
        (0 < s.tool_timeout_s <= 600, "tool_timeout_s must be 0-600"),
        (s.llm_history_tokens >= 100, "llm_history_tokens must be at least 100"),
        (all(f.strip() in CLIENT_SETTINGS
             for f in s.client_settings.split(",") if f.strip()),
         f"client_settings: choose among {', '.join(CLIENT_SETTINGS)}"),
        (0 <= s.tool_filler_ms <= 60000, "tool_filler_ms must be 0-60000"),
        (0 <= s.max_tool_rounds <= 10, "max_tool_rounds must be 0-10"),
        (all(t.strip() in CALL_TOOLS for t in s.call_tools.split(",") if t.strip()),
         f"call_tools: choose among {', '.join(CALL_TOOLS)}"),
        ("transfer_call" not in s.call_tools or s.transfer_target.startswith(
            ("sip:", "sips:", "tel:")), "transfer_call needs transfer_target, a SIP URI"),
        (256 <= s.local_llm_context <= 131072, "local_llm_context must be 256-131072"),
    ]


def _check_access(s: Any) -> None:
    if not 10 <= s.client_secret_ttl_s <= 7200:
        raise ConfigError("client_secret_ttl_s must be 10-7200")
    open_to_others = s.host not in ("localhost", "::1") and \
        not s.host.startswith("127.")
    if open_to_others and not (s.api_keys or s.api_keys_file) and \
            not s.insecure_no_auth:
        raise ConfigError(
            f"refusing to serve {s.host} with no API keys: anyone who reaches it "
            "could open sessions and spend your models. Set keys with --api-keys "
            "KEY1,KEY2 (or VOICE_API_KEYS, or --api-keys-file FILE), bind 127.0.0.1, "
            "or pass --insecure-no-auth if a gateway in front authenticates callers "
            "(docs/security.md)")
