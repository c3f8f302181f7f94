"""streamfan.settings: STREAMFAN_* parsing, strict booleans, errors that name the variable."""

from __future__ import annotations

import dataclasses

import pytest

from streamfan.errors import ConfigError
from streamfan.settings import Settings, _csv, setting, settings_table


def test_with_an_empty_environment_every_default_holds() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.redis_url, s.prefix, s.port, s.compression) == (
        "redis://127.0.0.1:6379/0",
        "streamfan",
        8765,
        False,
    )


def test_values_are_read_and_cast_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "STREAMFAN_REDIS_URL": "rediss://h:6380/1",
            "STREAMFAN_PORT": "0",
            "STREAMFAN_RETENTION_S": "60.5",
            "STREAMFAN_MAX_ATTEMPTS": "3",
            "STREAMFAN_ALLOWED_ORIGINS": " https://a.example , ,https://b.example",
            "STREAMFAN_UPSTREAM_BASE_URL": "http://127.0.0.1:8700/v1/",
            "STREAMFAN_LOG_LEVEL": "debug",
            "STREAMFAN_JWT_SECRET": "",
        }
    )
    assert s.redis_url == "rediss://h:6380/1"
    assert (s.port, s.retention_s, s.max_attempts) == (0, 60.5, 3)
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.upstream_base_url == "http://127.0.0.1:8700/v1"
    assert s.log_level == "DEBUG"
    assert s.jwt_secret is None


def test_variables_without_the_prefix_are_ignored() -> None:
    assert Settings.from_env({"PORT": "1", "REDIS_URL": "nope"}) == Settings()


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "On", " on "])
def test_true_booleans(raw: str) -> None:
    assert Settings.from_env({"STREAMFAN_COMPRESSION": raw}).compression is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "off", ""])
def test_false_booleans(raw: str) -> None:
    assert Settings.from_env({"STREAMFAN_COMPRESSION": raw}).compression is False


@pytest.mark.parametrize("raw", ["2", "y", "enabled", "truee", "-1", "none"])
def test_booleans_are_strict(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"STREAMFAN_INSECURE_NO_AUTH": raw})
    assert info.value.variable == "STREAMFAN_INSECURE_NO_AUTH"
    assert "STREAMFAN_INSECURE_NO_AUTH" in str(info.value)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("STREAMFAN_PORT", "http"),
        ("STREAMFAN_PORT", "70000"),
        ("STREAMFAN_PORT", "-1"),
        ("STREAMFAN_MAXLEN", "0"),
        ("STREAMFAN_MAXLEN", "1.5"),
        ("STREAMFAN_RETENTION_S", "-3"),
        ("STREAMFAN_RETENTION_S", "nan"),
        ("STREAMFAN_RETENTION_S", "inf"),
        ("STREAMFAN_LEASE_S", "0"),
        ("STREAMFAN_REDIS_URL", "http://localhost"),
        ("STREAMFAN_EVENTS_REDIS_URL", "localhost:6379"),
        ("STREAMFAN_UPSTREAM_BASE_URL", "ftp://x"),
        ("STREAMFAN_UPSTREAM_BASE_URL", "http://"),
        ("STREAMFAN_PREFIX", "a{b}"),
        ("STREAMFAN_PREFIX", ""),
        ("STREAMFAN_LOG_LEVEL", "verbose"),
    ],
)
def test_a_bad_value_fails_with_an_error_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: raw})
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}: invalid value {raw!r}")


def test_openai_api_key_is_the_fallback_for_the_upstream_key() -> None:
    assert Settings.from_env({"OPENAI_API_KEY": "sk-a"}).upstream_api_key == "sk-a"
    both = {"OPENAI_API_KEY": "sk-a", "STREAMFAN_UPSTREAM_API_KEY": "sk-b"}
    assert Settings.from_env(both).upstream_api_key == "sk-b"


def test_overrides_win_over_the_environment_and_none_is_no_override() -> None:
    s = Settings.from_env(
        {"STREAMFAN_PORT": "9000", "STREAMFAN_HOST": "0.0.0.0"}, port=1, host=None
    )
    assert (s.port, s.host) == (1, "0.0.0.0")


def test_an_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unknown setting 'nope'"):
        Settings.from_env({}, nope=1)


def test_settings_are_frozen_and_replace_makes_a_copy() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    assert s.replace(port=1).port == 1
    assert s.port == 8765


def test_keys_and_events_url_follow_the_settings() -> None:
    s = Settings(prefix="p", redis_url="redis://a/0")
    assert s.keys.meta("x") == "p:{x}:meta"
    assert s.events_url == "redis://a/0"
    assert s.replace(events_redis_url="redis://b/0").events_url == "redis://b/0"


def test_the_settings_table_lists_every_variable_with_its_meaning() -> None:
    rows = settings_table()
    assert len(rows) == len(dataclasses.fields(Settings))
    assert all(var.startswith("STREAMFAN_") and doc for var, _, doc in rows)
    assert ("STREAMFAN_PORT", "8765", "Gateway listen port (0 = pick a free one)") in rows


@pytest.mark.parametrize("prefix", ["sf\x0bx", "a b", "p\x1eq", "{p}", "é"])
def test_a_prefix_must_be_printable_ascii_without_braces_or_spaces(prefix: str) -> None:
    with pytest.raises(ConfigError, match="STREAMFAN_PREFIX"):
        Settings.from_env({"STREAMFAN_PREFIX": prefix})


# --- secrets ---------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["s3cr3t", "x" * 31, "é" * 15 + "x"])
def test_a_jwt_secret_under_32_bytes_is_refused_by_name_without_being_echoed(
    secret: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"STREAMFAN_JWT_SECRET": secret})
    assert info.value.variable == "STREAMFAN_JWT_SECRET"
    assert f"{len(secret.encode())} bytes is too short" in str(info.value)
    assert secret not in str(info.value)


def test_a_short_jwt_secret_is_refused_however_it_is_given() -> None:
    with pytest.raises(ConfigError, match="STREAMFAN_JWT_SECRET"):
        Settings.from_env({}, jwt_secret="short")
    with pytest.raises(ConfigError, match="STREAMFAN_JWT_SECRET"):
        Settings().replace(jwt_secret="short")


def test_a_jwt_secret_of_32_bytes_counted_in_utf8_is_accepted() -> None:
    assert Settings.from_env({"STREAMFAN_JWT_SECRET": "x" * 32}).jwt_secret == "x" * 32
    assert Settings.from_env({"STREAMFAN_JWT_SECRET": "é" * 16}).jwt_secret == "é" * 16


def test_the_upstream_key_is_never_judged_however_short() -> None:
    assert Settings.from_env({"STREAMFAN_UPSTREAM_API_KEY": "x"}).upstream_api_key == "x"


def test_secrets_stay_out_of_repr_and_are_listed_for_redaction() -> None:
    s = Settings(jwt_secret="j" * 40, upstream_api_key="sk-upstream-key")
    assert "j" * 40 not in repr(s) and "sk-upstream-key" not in repr(s)
    assert s.secrets == ("j" * 40, "sk-upstream-key")
    assert Settings().secrets == ()


def test_every_secret_setting_says_whether_streamfan_verifies_it() -> None:
    kinds = {f.name: f.metadata["secret"] for f in dataclasses.fields(Settings)}
    assert kinds["jwt_secret"] == "verified"
    assert kinds["upstream_api_key"] == "held"
    # A setting holding many secrets (the HTTP door's API keys) is checked one by one.
    assert all(kind in (None, "verified", "held") for kind in kinds.values())


def test_a_setting_of_several_verified_secrets_checks_each_one() -> None:
    # The hook the HTTP door's STREAMFAN_API_KEYS uses: a tuple marked "verified".
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithKeys(Settings):
        api_keys: tuple[str, ...] = setting((), "door keys", _csv, secret="verified")

    good = "k" * 32
    assert WithKeys.from_env({"STREAMFAN_API_KEYS": f"{good},{good}x"}).secrets == (
        good,
        good + "x",
    )
    with pytest.raises(ConfigError) as info:
        WithKeys.from_env({"STREAMFAN_API_KEYS": f"{good},tiny-key"})
    assert info.value.variable == "STREAMFAN_API_KEYS" and "tiny-key" not in str(info.value)
