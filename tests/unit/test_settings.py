"""The typed settings object (voice/settings.py): flags > environment > defaults."""

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


def test_defaults_without_flags_or_environment() -> None:
    settings = Settings.load(flags(), {})
    assert settings == Settings()
    assert settings.port == 8000
    assert settings.silence_ms == 250
    assert settings.vad_aggressiveness == 2


def test_environment_overrides_defaults_with_typed_values() -> None:
    settings = Settings.load(flags(), {"VOICE_PORT": "9001", "VOICE_MAX_TURN_S": "12.5",
                                       "VOICE_LLM_MODEL": "llama3", "OPENAI_BASE_URL": "http://x"})
    assert settings.port == 9001
    assert settings.max_turn_s == 12.5
    assert settings.llm_model == "llama3"
    assert settings.openai_base_url == "http://x"
    assert settings.silence_ms == 250  # untouched


def test_flags_override_environment() -> None:
    settings = Settings.load(flags("--port", "9002", "--silence-ms", "400"),
                             {"VOICE_PORT": "9001", "VOICE_MIN_SPEECH_MS": "300"})
    assert settings.port == 9002
    assert settings.silence_ms == 400
    assert settings.min_speech_ms == 300  # from the environment, no flag given


def test_load_reads_only_the_mapping_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICE_PORT", "9003")
    assert Settings.load(flags(), {}).port == 8000
    assert Settings.load(None, {"VOICE_PORT": "9004"}).port == 9004


def test_api_key_is_read_from_openai_api_key_and_redacted() -> None:
    settings = Settings.load(flags(), {"OPENAI_API_KEY": "sk-test-secret-123"})
    assert settings.openai_api_key == "sk-test-secret-123"
    redacted = settings.redacted()
    assert redacted["openai_api_key"] == "***"
    assert "sk-test-secret-123" not in str(redacted)
    assert redacted["port"] == 8000


def test_api_key_from_flag_is_redacted_too() -> None:
    settings = Settings.load(flags("--openai-api-key", "sk-flag"), {"OPENAI_API_KEY": "sk-env"})
    assert settings.openai_api_key == "sk-flag"
    assert "sk-flag" not in str(settings.redacted())


def test_empty_api_key_is_shown_as_empty() -> None:
    assert Settings.load(flags(), {}).redacted()["openai_api_key"] == ""


@pytest.mark.parametrize("argv, environ, field", [
    ((), {"VOICE_VAD_AGGRESSIVENESS": "5"}, "vad_aggressiveness"),
    (("--vad-aggressiveness", "-1"), {}, "vad_aggressiveness"),
    (("--vad-frame-ms", "25"), {}, "vad_frame_ms"),
    (("--port", "abc"), {}, "port"),
    ((), {"VOICE_PORT": "70000"}, "port"),
    ((), {"VOICE_PORT": "0"}, "port"),
    (("--max-turn-s", "long"), {}, "max_turn_s"),
    (("--silence-ms", "5"), {}, "silence_ms"),
    (("--idle-timeout-s", "0"), {}, "idle_timeout_s"),
    (("--max-message-bytes", "100"), {}, "max_message_bytes"),
])
def test_invalid_values_raise_config_error(argv: tuple[str, ...], environ: dict[str, str],
                                           field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(flags(*argv), environ)
    assert field in info.value.message
    assert info.value.code == "config_error"


def test_every_field_has_a_flag_and_an_environment_name() -> None:
    table = Settings.markdown_table()
    assert "`--openai-api-key` | `OPENAI_API_KEY`" in table
    assert "`--vad-frame-ms` | `VOICE_VAD_FRAME_MS`" in table
    assert "sk-" not in table
