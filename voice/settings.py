"""One typed settings object, read from CLI flags and the environment in one place.

Precedence: command-line flag > environment variable > default. Every field has an
environment name (`VOICE_<NAME>`, except the standard `OPENAI_BASE_URL` and
`OPENAI_API_KEY`) and a flag (`--name-with-dashes`). `voice settings` prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voice.errors import ConfigError
from voice.redact import redact_url
from voice.settings_checks import validate

SUPPORTED_SAMPLE_RATES = (8000, 16000, 24000, 48000)
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant on a live call. Answer in one to three short "
    "spoken sentences. No lists, no markdown, no emoji."
)


def _opt(default: Any, help: str, env: str | None = None, secret: bool = False,
         shown: str | None = None) -> Any:
    return field(default=default, repr=not secret,
                 metadata={"help": help, "env": env, "secret": secret, "shown": shown})




@dataclass(frozen=True)
class Settings:
    host: str = _opt("127.0.0.1", "Address the HTTP/WebSocket server binds to.")
    port: int = _opt(8000, "TCP port of the HTTP/WebSocket server.")
    log_level: str = _opt("INFO", "Log level: DEBUG, INFO, WARNING, ERROR.")
    log_format: str = _opt("text", "Log lines as text or json (one object per line); both "
                           "carry the session id.")
    drain_timeout_s: float = _opt(300.0, "On SIGTERM: how long active calls may go on (no new "
                                  "ones are taken) before they are ended with drain_message.")
    drain_message: str = _opt("Sorry, this line is closing now. Please call again. Goodbye.",
                              "Spoken to calls still active when the drain timeout ends.")
    # LLM
    llm: str = _opt("auto", "Which LLM: auto (the endpoint when OPENAI_BASE_URL or "
                    "OPENAI_API_KEY is set, else the bundled local model), local (the local "
                    "model, local_llm_model), endpoint, or echo (repeats what it heard).")
    local_llm_model: str = _opt("", "GGUF file of the local LLM (empty: the bundled "
                                "SmolLM2-135M-Instruct).", shown="(bundled)")
    local_llm_threads: int = _opt(2, "CPU threads of the local LLM.")
    local_llm_context: int = _opt(2048, "Tokens of context of the local LLM.")
    openai_base_url: str = _opt(
        "", "OpenAI-compatible endpoint (empty with no key: see llm).",
        env="OPENAI_BASE_URL")
    openai_api_key: str = _opt("", "API key for the LLM endpoint.", env="OPENAI_API_KEY",
                               secret=True)
    llm_model: str = _opt("gpt-4o-mini", "Chat model name sent to the endpoint.")
    system_prompt: str = _opt(DEFAULT_SYSTEM_PROMPT, "System prompt of every conversation.")
    llm_timeout_s: float = _opt(8.0, "Seconds to wait for the LLM's first token (and between "
                                "tokens) before the turn ends with an apology.")
    llm_max_tokens: int = _opt(300, "Upper bound on reply tokens.")
    llm_history_tokens: int = _opt(3000, "Conversation history the LLM reads, in tokens "
                                   "(about 4 characters each): past it the oldest turns "
                                   "are left out; the system prompt and the newest turn "
                                   "always stay.")
    llm_first_token_timeout_s: float = _opt(
        3.0, "Seconds an LLM endpoint may take to its first token before the turn moves to "
        "the fallback endpoint (at most llm_timeout_s).")
    llm_reply_timeout_s: float = _opt(
        60.0, "Longest an LLM endpoint may take for a whole reply; a slower one (a token "
        "every few seconds, for ever) ends the turn with an apology.")
    llm_fallback_url: str = _opt("", "Second OpenAI-compatible endpoint, tried within the same "
                                 "turn when the first fails (empty: none).",
                                 env="VOICE_LLM_FALLBACK_BASE_URL")
    llm_fallback_model: str = _opt("", "Model name at the fallback endpoint (empty: llm_model).")
    llm_fallback_api_key: str = _opt("", "API key of the fallback endpoint.", secret=True)
    # Tools the LLM may call (pipelines/tools.py)
    tools: str = _opt("", "Python module whose @tool functions the LLM may call, e.g. "
                      "examples.tools (empty: none).")
    tools_file: str = _opt("", "JSON file of webhook tools the LLM may call (empty: none).")
    tool_timeout_s: float = _opt(5.0, "Longest a tool may take (unless it sets its own); "
                                 "then the model hears it failed.")
    tool_filler_ms: int = _opt(700, "If a tool has not answered after this long, the caller "
                               "hears tool_filler_message (once a reply).")
    tool_filler_message: str = _opt("One moment.", "Said while a slow tool works.")
    max_tool_rounds: int = _opt(3, "Tool rounds in one reply at most; then the model must "
                                "answer in words.")
    client_settings: str = _opt("instructions,tools,turn_preset,voice,language",
                                "Session settings a client may change with session.update "
                                "(of instructions, tools, turn_preset, voice, language); "
                                "empty: none.")
    call_tools: str = _opt("", "Built-in call-control tools offered to the LLM, comma-"
                           "separated: end_call (the reply finishes, then the call ends), "
                           "transfer_call (then a phone call goes to transfer_target), "
                           "send_dtmf (presses keys on a phone line, RFC 4733); empty: none.")
    transfer_target: str = _opt("", "Where transfer_call sends a phone call (a SIP URI, "
                                "e.g. sip:desk@pbx.example.com); empty: no transfers.")
    transfer_failed_message: str = _opt("Sorry, I could not transfer you. Let us carry on.",
                                        "Said when a transfer did not happen.")
    # Circuit breakers, one per provider (voice/resilience.py)
    breaker_failure_ratio: float = _opt(0.1, "A provider's breaker opens when more than this "
                                        "share of its calls in the window failed ...")
    breaker_min_failures: int = _opt(2, "... and at least this many did (or at once on a "
                                     "429 with Retry-After, for that long).")
    breaker_window_s: float = _opt(60.0, "The sliding window the breaker counts calls in.")
    breaker_open_s: float = _opt(30.0, "How long an open breaker skips its provider before one "
                                 "probe call; doubles, with jitter, after a failed probe.")
    breaker_max_open_s: float = _opt(300.0, "Longest a breaker stays open (Retry-After too).")
    # Pipelines: cascade (the local models) or realtime (a speech-to-speech provider)
    pipeline: str = _opt("cascade", "Default pipeline of every session: cascade or realtime "
                         "(a WebSocket session may choose with ?pipeline=).")
    realtime_url: str = _opt("wss://api.openai.com/v1/realtime",
                             "OpenAI-Realtime-compatible WebSocket URL of the realtime "
                             "pipeline's provider (authenticated with OPENAI_API_KEY), e.g. "
                             "this service's own ws://HOST:PORT/v1/realtime.")
    realtime_model: str = _opt("gpt-realtime", "Model asked of the realtime provider.")
    realtime_voice: str = _opt("marin", "Voice asked of the realtime provider.")
    realtime_turn_detection: str = _opt(
        "server_vad", "Who ends a caller's turn in the realtime pipeline: server_vad or "
        "semantic_vad (the provider), or local (this service's VAD, then commit).")
    realtime_fallback: str = _opt(
        "cascade", "When the realtime provider is unreachable or its breaker is open: cascade "
        "(the local cascade serves the rest of the session) or hangup.")
    realtime_timeout_s: float = _opt(10.0, "Seconds the realtime provider may take to connect, "
                                     "to start a reply, or between events of a reply.")
    realtime_api_idle_timeout_s: float = _opt(
        300.0, "Close a /v1/realtime connection whose client sent no event this long (close "
        "4008).")
    # STT
    stt_model: str = _opt("", "faster-whisper model name or path; empty = bundled tiny.en.",
                          shown="(bundled)")
    stt_device: str = _opt("cpu", "CTranslate2 device.")
    stt_compute_type: str = _opt("int8", "CTranslate2 compute type.")
    stt_threads: int = _opt(1, "CPU threads for speech-to-text (CTranslate2, and its OpenMP "
                            "pool unless OMP_NUM_THREADS is set). One is fastest for turns "
                            "of a few seconds: a second thread spins more than it helps "
                            "(docs/deploy.md).")
    stt_language: str = _opt("en", "Spoken language (multilingual Whisper models).")
    stt_beam_size: int = _opt(1, "Beam size of the speech-to-text decoder; 1 is greedy. A "
                              "wider beam costs STT time on every turn (docs/recognition.md).")
    telephone_stt_beam_size: int = _opt(5, "Beam size for calls at 8 kHz (SIP, Twilio, "
                                        "Telnyx): on telephone audio a wider beam "
                                        "mishears fewer words for ~40 ms of STT, mostly "
                                        "hidden in the end-of-turn wait "
                                        "(docs/recognition.md).")
    stt_final_beam_size: int = _opt(0, "The final pass: 0 (none) or the beam of a second "
                                    "decode of each turn, whose words the reply is given "
                                    "while the speculative decode's serve the end-of-turn "
                                    "policy; it costs its STT time after the speculative "
                                    "one (docs/recognition.md).")
    stt_no_speech_threshold: float = _opt(0.6, "Drop transcripts whose no-speech probability "
                                          "is above this.")
    # TTS
    tts_voice: str = _opt("", "Piper voice .onnx path; empty = bundled en_US-joe-medium.",
                          shown="(bundled)")
    tts_voice_config: str = _opt("", "Piper voice .onnx.json; empty = next to the voice.",
                                 shown="(next to the voice)")
    tts_voices: str = _opt("", "More Piper voices a session may choose (session.update "
                           "voice): .onnx files or folders of them, comma-separated; each "
                           "is named by its file name without .onnx. All are loaded at "
                           "start.")
    # Shared inference: STT/TTS on an OpenAI audio API server (another worker, or OpenAI)
    stt_url: str = _opt("", "OpenAI audio API base URL (e.g. http://gpu-box:8001/v1) for "
                        "speech-to-text instead of the local model; empty: local.")
    stt_api_key: str = _opt("", "API key for --stt-url.", secret=True)
    stt_remote_model: str = _opt("whisper-1", "Transcription model asked of --stt-url.")
    tts_url: str = _opt("", "OpenAI audio API base URL for text-to-speech instead of the "
                        "local voice; empty: local.")
    tts_api_key: str = _opt("", "API key for --tts-url.", secret=True)
    tts_remote_model: str = _opt("tts-1", "Speech model asked of --tts-url.")
    tts_remote_voice: str = _opt("alloy", "Voice asked of --tts-url.")
    remote_timeout_s: float = _opt(10.0, "Longest wait for --stt-url or --tts-url per call.")
    audio_api_port: int = _opt(0, "Serve the OpenAI audio API (/v1/audio/transcriptions and "
                               "/v1/audio/speech) from the local models on this TCP port, on "
                               "--host, for other workers; 0: off.", shown="0 (off)")
    audio_api_key: str = _opt("", "If set, --audio-api-port also takes this bearer key "
                              "(beside --api-keys with the audio scope).", secret=True)
    # Access (voice/auth.py, docs/security.md)
    api_keys: str = _opt("", "API keys that open sessions (Authorization: Bearer KEY, "
                         "?token=KEY or the WebSocket subprotocol "
                         "openai-insecure-api-key.KEY), comma-separated, every scope; "
                         "empty with no --api-keys-file: no key needed (loopback only).",
                         secret=True, shown="(none)")
    api_keys_file: str = _opt("", "File of API keys, one per line: KEY [SCOPE,SCOPE...] with "
                              "scopes cascade, realtime, audio, secrets (none listed: all); "
                              "# starts a comment.", shown="(none)")
    allowed_origins: str = _opt("", "Browser page origins allowed to connect "
                                "(https://app.example.com, comma-separated, * for any); "
                                "empty: the page's own host and loopback pages only.",
                                shown="(same host)")
    insecure_no_auth: bool = _opt(False, "Allow --host other than loopback with no API keys "
                                  "(only behind a gateway that authenticates callers).")
    client_secret_ttl_s: float = _opt(600.0, "Lifetime of a client secret minted at "
                                      "/v1/realtime/client_secrets unless asked otherwise "
                                      "(10-7200 s).")
    debug_stage_delay: str = _opt(
        "", "Testing only: add delay to cascade stages, STAGE=MS[,STAGE=MS] with stages stt, "
        "llm, tts (e.g. stt=150), to check that the latency suite catches a slower stage.",
        shown="(none)")
    # Turn detection
    vad_aggressiveness: int = _opt(2, "webrtcvad aggressiveness 0-3.")
    vad_frame_ms: int = _opt(20, "VAD frame length: 10, 20 or 30 ms.")
    min_speech_ms: int = _opt(200, "Voiced speech needed before a turn starts.")
    turn_preset: str = _opt("default", "End of turn: default (200-1000 ms by transcript cues), "
                            "patient (800-1600 ms), or fixed (silence_ms).")
    min_wait_ms: int = _opt(0, "Silence that ends a turn that reads as complete (0: preset's).")
    max_wait_ms: int = _opt(0, "Silence that ends a turn that reads as unfinished "
                            "(0: preset's).")
    silence_ms: int = _opt(250, "The fixed preset's silence after the true end of speech.")
    continuation_window_ms: int = _opt(1000, "Speech this soon after a turn ended continues "
                                       "that turn: the reply stops, the whole is answered.")
    barge_in_pause_ms: int = _opt(80, "Speech over a reply this long pauses its audio.")
    barge_in_confirm_ms: int = _opt(900, "Speech over a reply this long interrupts it even "
                                    "before its words are known.")
    max_turn_s: float = _opt(30.0, "Longest single user turn; longer speech is cut here.")
    denoiser: str = _opt("none", "Noise suppression on the caller's audio before turn "
                         "detection and speech-to-text: none, or rnnoise (needs the "
                         "denoise extra; helps at 10 dB SNR, costs ~5% of a core per "
                         "caller: docs/latency.md).")
    echo_cancellation: bool = _opt(True, "Take the echo of the reply (a phone on speaker, "
                                   "a line with echo) out of the caller's audio, so that "
                                   "it is not heard as the caller speaking.")
    reprompt_message: str = _opt("Sorry, I didn't catch that.", "Said when a turn held "
                                 "speech but its words were not understood (empty: say "
                                 "nothing). Noise alone is never answered.")
    # Keypad (DTMF, from SIP phones or clients)
    dtmf_hangup_digit: str = _opt("0", "Keypad digit that ends the call after the hang-up "
                                  "message (empty: none).")
    dtmf_hangup_message: str = _opt("Connecting you to a person. Goodbye.",
                                    "Spoken before hanging up on the hang-up digit.")
    # Sessions and limits
    max_sessions: int = _opt(100, "Concurrent sessions (WebSocket, WebRTC, /v1/realtime "
                             "and SIP together); more are refused with HTTP 503 (SIP "
                             "503). The worker's headroom (shed_busy, shed_wait_ms) "
                             "usually refuses sooner.")
    shed_busy: float = _opt(0.85, "Refuse new sessions (HTTP 503, SIP 503, /readyz fails) "
                            "when a local model's thread would be busier than this share "
                            "of its time with one more session; 0: off.")
    shed_wait_ms: int = _opt(300, "Refuse new sessions when the work callers wait for "
                             "(final transcripts, first sentences) waited longer than this "
                             "for a local model (90th percentile, last 10 s); 0: off.")
    max_sessions_per_address: int = _opt(
        0, "Concurrent sessions from one source address; more are refused with HTTP 503 "
        "(SIP 486); 0: no such limit.")
    max_message_bytes: int = _opt(131072, "Largest client WebSocket message accepted.")
    idle_timeout_s: float = _opt(60.0, "Close a session whose client sent nothing this long.")
    max_session_s: float = _opt(3600.0, "Longest session: then max_session_message is spoken "
                                "and the call ends (WebSocket close 1000, SIP BYE); 0: no limit.")
    max_session_message: str = _opt("We have reached the time limit for this call. Goodbye.",
                                     "Spoken when a session reaches max_session_s.")
    playout_lead_ms: int = _opt(200, "How far ahead of real time reply audio is sent.")
    # usage, cost and call records (voice/usage.py, service/call_records.py)
    price_table: str = _opt("", "JSON file of prices ({\"prices\": [{\"model\": ..., "
                            "\"dated\": ..., \"input_per_m\": ...}]}) added to the built-in "
                            "OpenAI list prices; local models cost nothing per use.",
                            shown="(built-in)")
    call_records_dir: str = _opt("", "Directory for a JSON record of every call (transcript, "
                                 "latency, usage, cost, end reason).", shown="(none)")
    call_records_url: str = _opt("", "Webhook that is POSTed every call's record (retried "
                                 "with backoff, never holding up a call).", shown="(none)")
    call_records_secret: str = _opt("", "Key of the webhook's HMAC-SHA256 signature "
                                    "(X-Voice-Signature).", secret=True, shown="(none)")
    call_records_days: float = _opt(30.0, "Days call records are kept in call_records_dir; "
                                    "0: for ever.")
    record_calls: bool = _opt(False, "Record every call's audio (the caller left, the "
                              "assistant right, 16 kHz WAV) beside its record in "
                              "call_records_dir; tell callers, where the law asks it.")
    otlp_endpoint: str = _opt("", "OTLP/HTTP collector for traces of sessions and turns, e.g. "
                              "http://collector:4318 (also OTEL_EXPORTER_OTLP_ENDPOINT); "
                              "empty: no traces.", shown="(none)")
    # WebRTC (transports/webrtc; docs/protocol.md "WebRTC")
    rtc_allow_loopback: bool = _opt(False, "Offer 127.0.0.1 as a WebRTC ICE candidate, so a "
                                    "browser on this machine connects with no network.")
    rtc_stun_server: str = _opt("", "STUN server (stun:host:port) for WebRTC; empty: none, "
                                "host candidates only.", shown="(none)")
    rtc_turn_server: str = _opt("", "TURN server (turn:host:port, turn:host:port?transport=tcp"
                                " or turns:host:port) relaying WebRTC media.", shown="(none)")
    rtc_turn_username: str = _opt("", "TURN username.", shown="(none)")
    rtc_turn_password: str = _opt("", "TURN password.", secret=True, shown="(none)")
    rtc_peer_timeout_s: float = _opt(10.0, "End a WebRTC call whose peer has not connected "
                                     "(ICE+DTLS) this long after the offer, or sent no audio "
                                     "for this long.")

    # SIP phone-line bridge (transports/sip; docs/sip.md)
    sip_port: int = _opt(0, "UDP port of the SIP bridge on --host; 0: no SIP.", shown="0 (off)")
    sip_allow: str = _opt("127.0.0.0/8,::1/128", "Source addresses (CIDR[,CIDR...]) whose "
                          "SIP requests are answered; others are ignored.")
    sip_advertise: str = _opt("", "Address put in SDP and Contact; empty: --host.",
                              shown="(--host)")
    sip_rtp_ports: str = _opt("", "RTP port range LOW-HIGH; empty: any free port.",
                              shown="(any)")
    sip_max_calls: int = _opt(20, "Concurrent SIP calls; more get 486 Busy Here.")
    sip_ring_ms: int = _opt(0, "Ring this long (180 Ringing) before answering a call.")
    sip_rtp_timeout_s: float = _opt(30.0, "End a call (BYE) whose caller sent no RTP this long.")
    sip_jitter_ms: int = _opt(60, "Longest wait for a missing RTP packet before it is "
                              "concealed as lost.")
    sip_rtp_priority: int = _opt(0, "Real-time priority (SCHED_FIFO 1-99) of the thread that "
                                 "sends RTP, if the OS allows it; 0: normal priority.")
    sip_inbound_user: str = _opt("", "If set, callers must authenticate (digest) as this user.",
                                 shown="(none)")
    sip_inbound_password: str = _opt("", "Password for --sip-inbound-user.", secret=True,
                                     shown="(none)")
    sip_register: str = _opt("", "Registrar to REGISTER with (sip:host[:port]); empty: none.",
                             shown="(none)")
    sip_user: str = _opt("", "User for REGISTER and outbound calls (digest auth).",
                         shown="(none)")
    sip_password: str = _opt("", "Password for --sip-user.", secret=True, shown="(none)")
    sip_register_expires: int = _opt(300, "Registration lifetime asked for, in seconds; "
                                     "refreshed before it runs out.")
    # telephony media streams (/twilio, /telnyx; docs/telephony.md)
    twilio_auth_token: str = _opt("", "Twilio account auth token: when set, /twilio media "
                                  "streams must carry a valid X-Twilio-Signature (and need no "
                                  "API key); empty: an API key in the path, /twilio/KEY.",
                                  secret=True, shown="(none)")
    media_stream_public_url: str = _opt("", "Public base URL the providers connect to "
                                        "(wss://voice.example.com), the one Twilio signs; "
                                        "empty: wss:// and the request's Host header.",
                                        shown="(Host header)")
    telnyx_api_key: str = _opt("", "Telnyx API key (v2): when set, a /telnyx call the "
                               "service ends (end_call, the hang-up digit, the time limit, "
                               "a drain) is also hung up through Call Control; empty: only "
                               "the stream closes and your application ends the call.",
                               secret=True, shown="(none)")
    telnyx_api_url: str = _opt("https://api.telnyx.com/v2", "Telnyx API base URL for "
                               "--telnyx-api-key.")

    @classmethod
    def env_name(cls, f: dataclasses.Field[Any]) -> str:
        return str(f.metadata.get("env") or f"VOICE_{f.name.upper()}")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            extra: dict[str, Any] = {"nargs": "?", "const": "true"} if f.type == "bool" else {}
            parser.add_argument(flag, dest=f.name, type=str, default=None, **extra,
                                help=f"{f.metadata['help']} [env {cls.env_name(f)}]")

    @classmethod
    def load(cls, args: argparse.Namespace | None = None,
             environ: Mapping[str, str] | None = None) -> Settings:
        environ = environ or {}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = getattr(args, f.name, None) if args is not None else None
            if raw is None and cls.env_name(f) in environ:
                raw = environ[cls.env_name(f)]
            if raw is None:
                continue
            values[f.name] = _convert(f, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        validate(self)  # voice/settings_checks.py

    def redacted(self) -> dict[str, Any]:
        """Settings for logs: secrets replaced by a marker."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            elif isinstance(value, str) and "://" in value:
                value = redact_url(value)  # a URL may carry credentials of its own
            out[f.name] = value
        return out

    @property
    def llm_choice(self) -> str:
        """The LLM `llm` resolves to: local, endpoint or echo."""
        if self.llm != "auto":
            return self.llm
        return "endpoint" if self.openai_base_url or self.openai_api_key else "local"

    @classmethod
    def markdown_table(cls) -> str:
        rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = f.metadata.get("shown") or ("(none)" if f.default == "" else f.default)
            if f.name == "system_prompt":
                default = "(short voice-assistant prompt)"
            rows.append(f"| `--{f.name.replace('_', '-')}` | `{cls.env_name(f)}` | "
                        f"`{default}` | {f.metadata['help']} |")
        return "\n".join(rows)




def boolean(raw: str) -> bool:
    value = str(raw).strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        raise ValueError(raw)
    return value in ("1", "true", "yes", "on")


def _convert(f: dataclasses.Field[Any], raw: Any) -> Any:
    kinds: dict[str, Callable[[Any], Any]] = {"int": int, "float": float, "bool": boolean}
    kind = kinds.get(str(f.type), str)
    try:
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{f.name}: cannot read {raw!r} as {f.type}") from exc
