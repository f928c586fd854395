"""Who may open a session (voice/auth.py): API keys with scopes, client secrets that
open one session before they expire, browser origins, and the refusal to serve a
non-loopback address with no keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from voice.auth import Credentials, Denied, Grant, origin_allowed, presented_token
from voice.errors import ConfigError
from voice.settings import Settings

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_keys_from_the_list_and_the_file_with_scopes(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# rotated monthly\nnew-key\nphone-app cascade  # no realtime\n")
    credentials = Credentials.load("old-key, other", str(keys))
    assert isinstance(credentials.check("old-key", "realtime"), Grant)
    assert isinstance(credentials.check("new-key", "secrets"), Grant)
    assert isinstance(credentials.check("phone-app", "cascade"), Grant)
    refused = credentials.check("phone-app", "realtime")
    assert isinstance(refused, Denied) and refused.status == 403
    for token in (None, "", "wrong", "old-ke", "old-key "):
        denied = credentials.check(token, "cascade")
        assert isinstance(denied, Denied) and denied.status == 401, token


def test_a_bad_keys_file_is_a_configuration_error(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("key realtime,everything\n")
    with pytest.raises(ConfigError, match="unknown scope"):
        Credentials.load("", str(keys))
    with pytest.raises(ConfigError, match="cannot read"):
        Credentials.load("", str(tmp_path / "missing"))
    keys.write_text("# every key was removed while rotating\n\n")
    with pytest.raises(ConfigError, match="holds no keys"):  # not "open to everyone"
        Credentials.load("", str(keys))


def test_no_keys_means_nothing_is_required() -> None:
    assert isinstance(Credentials().check(None, "realtime"), Grant)


def test_a_client_secret_opens_one_session_before_it_expires() -> None:
    clock = Clock()
    credentials = Credentials({"server-key": frozenset({"cascade", "secrets"})}, clock=clock)
    minter = credentials.check("server-key", "secrets")
    assert isinstance(minter, Grant)
    value, expires_at = credentials.mint(minter, {"pipeline": "cascade"}, 60)
    assert value.startswith("ek_") and expires_at == int(clock.now + 60)
    grant = credentials.check(value, "cascade")
    assert isinstance(grant, Grant) and grant.session == {"pipeline": "cascade"}
    assert "secrets" not in grant.scopes  # a secret cannot mint more
    assert isinstance(credentials.check(value, "cascade"), Denied)  # used up
    late, _ = credentials.mint(minter, {}, 60)
    clock.now += 61
    assert isinstance(credentials.check(late, "cascade"), Denied)  # expired
    narrow, _ = credentials.mint(minter, {}, 60)
    refused = credentials.check(narrow, "realtime")  # the minting key had no realtime
    assert isinstance(refused, Denied) and refused.status == 403


def test_a_secret_whose_session_was_refused_is_given_back_until_it_expires() -> None:
    clock = Clock()
    credentials = Credentials({"server-key": frozenset({"cascade", "secrets"})}, clock=clock)
    minter = credentials.check("server-key", "secrets")
    assert isinstance(minter, Grant)
    value, _ = credentials.mint(minter, {}, 60)
    assert isinstance(credentials.check(value, "realtime"), Denied)  # not its scope: kept
    grant = credentials.check(value, "cascade")
    assert isinstance(grant, Grant)
    assert value not in repr(grant)
    credentials.give_back(grant)  # e.g. the worker was full
    again = credentials.check(value, "cascade")
    assert isinstance(again, Grant)
    clock.now += 61
    credentials.give_back(again)  # too late: it has expired meanwhile
    assert isinstance(credentials.check(value, "cascade"), Denied)
    credentials.give_back(credentials.check("server-key", "cascade"))  # type: ignore[arg-type]
    assert isinstance(credentials.check(value, "cascade"), Denied)  # keys are not stored


def test_the_credential_comes_from_the_header_the_query_or_the_subprotocol() -> None:
    assert presented_token("Bearer abc", None, []) == "abc"
    assert presented_token("bearer  abc ", None, []) == "abc"
    assert presented_token(None, "q", ["realtime"]) == "q"
    assert presented_token(None, None, ["realtime", "openai-insecure-api-key.ek_x"]) == "ek_x"
    assert presented_token("Basic Zm9v", None, ["openai-insecure-api-key."]) is None


def test_browser_origins() -> None:
    host = "voice.example.com:8000"
    assert origin_allowed(None, host, [])  # not a browser
    assert origin_allowed("http://voice.example.com:8000", host, [])  # same origin
    assert origin_allowed("http://127.0.0.1:5173", host, [])  # a developer's page
    assert origin_allowed("http://localhost:3000", host, [])
    assert not origin_allowed("http://evil.example", host, [])
    assert not origin_allowed("null", host, [])
    allowed = ["https://app.example.com"]
    assert origin_allowed("https://app.example.com", host, allowed)
    assert not origin_allowed("http://voice.example.com:8000", host, allowed)
    assert origin_allowed("http://evil.example", host, ["*"])


def test_serving_other_addresses_needs_keys_or_an_explicit_opt_out() -> None:
    Settings(host="127.0.0.1").validate()
    with pytest.raises(ConfigError, match="--api-keys") as refused:
        Settings(host="0.0.0.0").validate()
    assert "--insecure-no-auth" in str(refused.value)
    Settings(host="0.0.0.0", api_keys="k1").validate()
    Settings(host="0.0.0.0", insecure_no_auth=True).validate()
