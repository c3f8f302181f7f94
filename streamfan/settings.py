"""Settings: one frozen object per process, built once from ``STREAMFAN_*``.

Every field below is read from the environment variable ``STREAMFAN_`` + its
upper-cased name; CLI flags override them through ``Settings.from_env(**overrides)``.
A bad value fails at start-up with a :class:`ConfigError` that names the variable.
``docs/operations.md`` lists the same table (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from streamfan.errors import ConfigError
from streamfan.keys import DEFAULT_PREFIX, Keys

ENV_PREFIX = "STREAMFAN_"
#: Where a gateway listens unless told (``streamfan up`` starts its first one there too).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("expected a positive number")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError("expected a number >= 0")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("expected a positive integer")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("expected a port number 0-65535")
    return value


def _redis_url(raw: str) -> str:
    scheme = urlsplit(raw).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    return raw


def _optional_redis_url(raw: str) -> str | None:
    return _redis_url(raw) if raw else None


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL")
    return raw.rstrip("/")


#: STREAMFAN_DURABLE_FINISH: how a stream's end is made durable before readers are told.
DURABLE_OFF = "off"
DURABLE_LOCAL = "local"  # WAITAOF 1 0: this Redis's append-only file is fsynced
DURABLE_REPLICA = "replica"  # WAITAOF 0 1: a replica has it in its fsynced AOF
DURABLE_MODES = (DURABLE_OFF, DURABLE_LOCAL, DURABLE_REPLICA)


def _durable_mode(raw: str) -> str:
    value = raw.strip().lower()
    if value not in DURABLE_MODES:
        raise ValueError(f"expected one of {', '.join(DURABLE_MODES)}")
    return value


def _optional_str(raw: str) -> str | None:
    return raw or None


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _prefix(raw: str) -> str:
    # Printable ASCII only: key names travel inside the worker's batched append
    # record (scripts.APPEND_MANY), where spaces, newlines and control bytes
    # separate fields; braces would change the Redis Cluster hash tag.
    if not raw or not all("!" <= c <= "~" and c not in "{}" for c in raw):
        raise ValueError("expected a non-empty prefix of printable ASCII, no braces or spaces")
    return raw


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


#: Secrets streamfan itself verifies (it holds both ends): each shorter than this
#: is refused at start-up. An HS256 key shorter than its 32-byte hash output is
#: what RFC 7518 (3.2) forbids and PyJWT warns about.
MIN_SECRET_BYTES = 32


def setting(
    default: Any, doc: str, cast: Callable[[str], Any], *, secret: str | None = None
) -> Any:
    """A field read from ``STREAMFAN_<NAME>``.

    ``secret``: ``"verified"`` for a secret streamfan checks tokens or keys
    against (at least :data:`MIN_SECRET_BYTES`), ``"held"`` for one it only
    passes on (the upstream's key: the provider's business, never judged). Both
    stay out of ``repr``, error messages and logs (:mod:`streamfan.redact`).
    """
    return field(
        default=default,
        repr=secret is None,
        metadata={"doc": doc, "cast": cast, "secret": secret},
    )


@dataclass(frozen=True, slots=True)
class Settings:
    # --- shared -----------------------------------------------------------------
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "Redis holding the arq queue (and events by default)",
        _redis_url,
    )
    events_redis_url: str | None = setting(
        None, "Redis for the event streams, if not the queue's", _optional_redis_url
    )
    prefix: str = setting(DEFAULT_PREFIX, "Prefix of every streamfan key", _prefix)
    retention_s: float = setting(
        86400.0, "TTL of a finished stream's keys, seconds", _positive_float
    )
    maxlen: int = setting(100_000, "Approximate cap on entries of one stream", _positive_int)
    jwt_secret: str | None = setting(
        None,
        "HS256 secret for subscribe tokens (gateway, client API); 32 bytes or more",
        _optional_str,
        secret="verified",
    )
    token_ttl_s: float = setting(3600.0, "Lifetime of minted tokens, seconds", _positive_float)
    queue_name: str = setting("arq:queue", "arq queue name", str)
    log_level: str = setting("INFO", "Log level", _log_level)

    # --- worker -----------------------------------------------------------------
    upstream_base_url: str = setting(
        "https://api.openai.com/v1", "OpenAI-compatible base URL (…/v1)", _http_url
    )
    upstream_api_key: str | None = setting(
        None, "Upstream API key (falls back to OPENAI_API_KEY)", _optional_str, secret="held"
    )
    upstream_connect_timeout_s: float = setting(
        10.0, "Connect timeout to the upstream, seconds", _positive_float
    )
    upstream_read_timeout_s: float = setting(
        60.0, "Error when the upstream sends no bytes for this long, seconds", _positive_float
    )
    upstream_idle_timeout_s: float = setting(
        120.0,
        "Error when the upstream sends no content (only keep-alives) for this long, seconds",
        _positive_float,
    )
    max_attempts: int = setting(5, "Attempts per job before it ends with error", _positive_int)
    retry_base_s: float = setting(0.5, "First retry backoff, seconds (doubles)", _positive_float)
    retry_max_s: float = setting(30.0, "Longest retry backoff, seconds", _positive_float)
    worker_max_jobs: int = setting(1000, "Concurrent streams per worker process", _positive_int)
    worker_poll_delay_s: float = setting(0.05, "arq queue poll interval, seconds", _positive_float)
    job_timeout_s: float = setting(
        3600.0, "Longest a single generation may run, seconds", _positive_float
    )
    lease_s: float = setting(
        10.0, "Lease of a running job; a killed worker's job restarts after it", _positive_float
    )
    durable_finish: str = setting(
        DURABLE_OFF,
        "Before a stream ends, wait until its reply is on disk: off, local (this Redis's "
        "AOF, WAITAOF) or replica (a replica's AOF); docs/operations.md",
        _durable_mode,
    )
    durable_finish_timeout_s: float = setting(
        5.0,
        "Longest wait for durable-finish before a stream ends anyway, seconds",
        _positive_float,
    )
    health_check_interval_s: float = setting(
        10.0, "arq health-check interval, seconds", _positive_float
    )
    worker_metrics_port: int = setting(
        0, "Port of the worker's /metrics, /healthz and /readyz (0 = off)", _port
    )
    redis_timeout_s: float = setting(
        5.0,
        "A worker's Redis round trip that takes longer fails and is retried (a hung Redis)",
        _positive_float,
    )
    orphan_sweep_s: float = setting(
        30.0,
        "How often each open stream is checked for a lost job (then ends: error orphaned)",
        _positive_float,
    )

    # --- gateway ----------------------------------------------------------------
    host: str = setting(DEFAULT_HOST, "Listen address (gateway; the worker's metrics port)", str)
    port: int = setting(DEFAULT_PORT, "Gateway listen port (0 = pick a free one)", _port)
    insecure_no_auth: bool = setting(False, "Serve without tokens (development only)", _bool)
    allowed_origins: tuple[str, ...] = setting(
        (),
        "Comma-separated Origins allowed to open a WebSocket or call an HTTP door (empty = any)",
        _csv,
    )
    max_subscriptions: int = setting(100, "Subscriptions per connection", _positive_int)
    max_frame_bytes: int = setting(
        16384, "Largest client frame; bigger closes the connection", _positive_int
    )
    max_messages_per_s: float = setting(
        50.0, "Sustained client messages per second before a flood close", _positive_float
    )
    send_buffer_bytes: int = setting(
        1_048_576, "Unsent bytes per socket before a too_slow disconnect", _positive_int
    )
    ping_interval_s: float = setting(20.0, "Keepalive ping interval, seconds", _positive_float)
    ping_timeout_s: float = setting(20.0, "Keepalive pong timeout, seconds", _positive_float)
    handshake_timeout_s: float = setting(
        10.0, "Time to finish the WebSocket handshake, seconds", _positive_float
    )
    compression: bool = setting(False, "permessage-deflate (off: encode once)", _bool)
    read_pool_size: int = setting(8, "Redis connections for history reads", _positive_int)
    api_keys: tuple[str, ...] = setting(
        (),
        "Comma-separated keys (32+ bytes each) that may submit through /v1/chat/completions",
        _csv,
        secret="verified",
    )
    submits_per_minute: float = setting(
        120.0,
        "Submits per credential per minute on /v1/chat/completions (then 429)",
        _positive_float,
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build from ``environ`` (default ``os.environ``); ``None`` overrides are ignored."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = ENV_PREFIX + f.name.upper()
            raw = env.get(name)
            if raw is None and f.name == "upstream_api_key":
                raw = env.get("OPENAI_API_KEY")
            if raw is not None:
                try:
                    values[f.name] = f.metadata["cast"](raw)
                except ValueError as exc:
                    shown = "" if f.metadata["secret"] else f" {raw!r}"
                    raise ConfigError(name, f"invalid value{shown}: {exc}") from None
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in {f.name for f in dataclasses.fields(cls)}:
                raise TypeError(f"unknown setting {key!r}")
            values[key] = value
        return cls(**values)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.metadata["secret"] != "verified":
                continue
            value = getattr(self, f.name)
            # A setting holding several (a list of API keys) checks each one, and
            # says which (never the value: errors are printed and logged).
            several = not isinstance(value, str)
            for i, secret in enumerate((value,) if not several else value or (), 1):
                size = len(secret.encode())
                if size < MIN_SECRET_BYTES:
                    which = f"key {i} of" if several else "a secret of"
                    raise ConfigError(
                        ENV_PREFIX + f.name.upper(),
                        f"{which} {size} bytes is too short: use {MIN_SECRET_BYTES} or "
                        "more random bytes (python -c 'import secrets; "
                        "print(secrets.token_urlsafe(32))')",
                    )

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value set (verified and held), for :mod:`streamfan.redact`."""
        found: list[str] = []
        for f in dataclasses.fields(self):
            if f.metadata["secret"]:
                value = getattr(self, f.name)
                found.extend((value,) if isinstance(value, str) else value or ())
        return tuple(found)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    @property
    def events_url(self) -> str:
        return self.events_redis_url or self.redis_url


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for docs and ``--help``."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default
        shown = "" if default is None or default == () else str(default)
        rows.append((ENV_PREFIX + f.name.upper(), shown, f.metadata["doc"]))
    return rows
