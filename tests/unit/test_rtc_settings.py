"""The WebRTC settings (voice/settings.py): a flag that needs no value, typed timeouts."""

from __future__ import annotations

import argparse

import pytest

from voice.errors import ConfigError
from voice.settings import Settings

pytestmark = pytest.mark.unit


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_loopback_is_off_by_default_and_a_bare_flag_turns_it_on() -> None:
    assert Settings.load(flags(), {}).rtc_allow_loopback is False
    assert Settings.load(flags("--rtc-allow-loopback"), {}).rtc_allow_loopback is True
    assert Settings.load(flags("--rtc-allow-loopback", "no"), {}).rtc_allow_loopback is False


@pytest.mark.parametrize("raw, expected", [("1", True), ("true", True), ("YES", True),
                                           ("on", True), ("0", False), ("false", False),
                                           ("off", False), ("", False)])
def test_loopback_from_the_environment(raw: str, expected: bool) -> None:
    settings = Settings.load(flags(), {"VOICE_RTC_ALLOW_LOOPBACK": raw})
    assert settings.rtc_allow_loopback is expected


def test_a_misspelt_boolean_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="rtc_allow_loopback"):
        Settings.load(flags(), {"VOICE_RTC_ALLOW_LOOPBACK": "maybe"})


def test_peer_timeout_must_be_positive_and_turn_password_is_secret() -> None:
    with pytest.raises(ConfigError):
        Settings.load(flags("--rtc-peer-timeout-s", "0"), {})
    settings = Settings.load(flags("--rtc-turn-password", "hunter2"), {})
    assert "hunter2" not in str(settings.redacted()) and "hunter2" not in repr(settings)
