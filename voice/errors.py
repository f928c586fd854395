"""The service's one error tree.

    VoiceError                      base of everything we raise on purpose
    ├── ConfigError                 a setting is missing or invalid (startup fails)
    ├── ProtocolError               malformed input on a wire (carries a client-facing `code`)
    │   ├── MessageTooLarge         a message over the documented size limit
    │   └── SipError                a SIP request we refuse, with the response `status`
    ├── CapacityError               the session cap is reached (close 1013)
    └── ProviderError               an STT/LLM/TTS/realtime provider failed
        ├── ProviderTimeout         it did not answer within the timeout
        └── ProviderRateLimited     it refused with a rate limit (HTTP 429)

Vendor exceptions are translated where they enter our code
(`raise ProviderError(...) from exc`), so the rest of the service handles these only.
"""

from __future__ import annotations


class VoiceError(Exception):
    """Base class; `code` is the stable identifier sent to clients in `error` events."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(VoiceError):
    code = "config_error"


class ProtocolError(VoiceError):
    code = "protocol_error"


class MessageTooLarge(ProtocolError):
    code = "message_too_large"


class SipError(ProtocolError):
    """A SIP request that gets a final error response (`status`, e.g. 400, 488)."""

    code = "sip_error"

    def __init__(self, status: int, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status


class CapacityError(VoiceError):
    code = "capacity"


class ProviderError(VoiceError):
    code = "provider_error"

    def __init__(self, message: str, *, provider: str, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.provider = provider


class ProviderTimeout(ProviderError):
    code = "provider_timeout"


class ProviderRateLimited(ProviderError):
    code = "provider_rate_limited"

    def __init__(self, message: str, *, provider: str, code: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message, provider=provider, code=code)
        self.retry_after_s = retry_after_s  # the provider's Retry-After, when it sent one
