"""Hub configuration: defaults, a TOML file, ``CHATHUB_*`` environment variables, flags.

Precedence: flags > environment > file > defaults. Every setting is validated; an
invalid one raises ``ConfigError`` naming the key and the reason. docs/configuration.md
lists them all.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from typing import Any, Mapping

ENV_PREFIX = "CHATHUB_"


class ConfigError(ValueError):
    def __init__(self, key: str, reason: str, source: str = "") -> None:
        self.key = key
        self.reason = reason
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"invalid setting '{key}'{where}: {reason}")


@dataclass(frozen=True, slots=True)
class HubConfig:
    # network
    host: str = "127.0.0.1"
    port: int = 8080
    # auth
    jwt_secret: str | None = None  # None: dev mode (a secret is generated and printed)
    jwt_algorithm: str = "HS256"
    jwt_public_key: str | None = None  # PEM text or a path to a PEM file (RS256/ES256)
    jwt_require_exp: bool = True
    auth_timeout: float = 5.0
    # backends
    data_dir: str = "./chathub-data"
    postgres_dsn: str | None = None
    redis_url: str | None = None
    migrate_on_start: bool = True
    sqlite_cache_kib: int = 16384  # page cache of the embedded SQLite store (an upper bound)
    sqlite_commit_interval_ms: float = 0.0  # shortest time between two group commits (0: off)
    # limits (the seed's HubConfig)
    max_connections_per_user: int = 3
    max_rooms_per_connection: int = 50
    message_queue_size: int = 1000
    heartbeat_interval: float = 30.0
    connection_timeout: float = 300.0
    rate_limit_window: float = 60.0
    rate_limits: bool = True  # CHATHUB_RATE_LIMITS=off for benchmarks and load tests
    rate_limit_message: int = 30  # per rate_limit_window: send, dm
    rate_limit_typing: int = 60
    rate_limit_reaction: int = 100
    rate_limit_other: int = 50  # every other command
    max_message_size: int = 1024 * 1024
    enable_compression: bool = True
    # rooms and history
    auto_create_rooms: bool = True
    typing_timeout: float = 6.0
    presence_grace: float = 5.0
    large_room_threshold: int = 1000
    retention_max_age_s: int | None = None
    retention_max_per_room: int | None = None
    # operations
    log_level: str = "info"

    @property
    def dev_mode(self) -> bool:
        return self.jwt_secret is None and self.jwt_public_key is None


_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "ES256")
_LOG_LEVELS = ("debug", "info", "warning", "error")

# key -> (lo, hi) inclusive bounds for numbers
_BOUNDS: dict[str, tuple[float, float]] = {
    "port": (0, 65535),
    "auth_timeout": (0.1, 3600),
    "max_connections_per_user": (1, 1_000_000),
    "max_rooms_per_connection": (1, 100_000),
    "message_queue_size": (1, 10_000_000),
    "heartbeat_interval": (0.1, 86400),
    "connection_timeout": (1, 86400 * 7),
    "rate_limit_window": (1, 86400),
    "rate_limit_message": (1, 10**9),
    "rate_limit_typing": (1, 10**9),
    "rate_limit_reaction": (1, 10**9),
    "rate_limit_other": (1, 10**9),
    "max_message_size": (64, 64 * 1024 * 1024),
    "typing_timeout": (0.1, 3600),
    "presence_grace": (0, 3600),
    "large_room_threshold": (1, 10_000_000),
    "retention_max_age_s": (1, 100 * 365 * 86400),
    "retention_max_per_room": (1, 10**12),
    "sqlite_cache_kib": (64, 16 * 1024 * 1024),
    "sqlite_commit_interval_ms": (0, 1000),
}

_FIELDS = {f.name: f for f in fields(HubConfig)}
_SECRET_KEYS = frozenset({"jwt_secret", "postgres_dsn", "redis_url"})


def _base_type(name: str) -> type:
    t = str(_FIELDS[name].type)
    for cand, typ in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if t.startswith(cand):
            return typ
    raise AssertionError(t)  # pragma: no cover


def _optional(name: str) -> bool:
    return "None" in str(_FIELDS[name].type)


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a file value or an environment string into the field's type."""
    typ = _base_type(name)
    from_env = source.startswith("env")
    if value is None or (from_env and value == "" and _optional(name)):
        if _optional(name):
            return None
        raise ConfigError(name, "must be set", source)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        raise ConfigError(name, f"must be true or false, got {value!r}", source)
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(name, f"must be a number, got {value!r}", source)
        if from_env and isinstance(value, str):
            try:
                value = int(value) if typ is int else float(value)
            except ValueError:
                raise ConfigError(name, f"must be a{'n integer' if typ is int else ' number'}, got {value!r}", source) from None
        if typ is int and not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(name, f"must be an integer, got {value!r}", source)
        if typ is float and not isinstance(value, (int, float)):
            raise ConfigError(name, f"must be a number, got {value!r}", source)
        return typ(value)
    if not isinstance(value, str):
        raise ConfigError(name, f"must be a string, got {type(value).__name__}", source)
    return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _validate(cfg: HubConfig, sources: Mapping[str, str]) -> None:
    def src(k: str) -> str:
        return sources.get(k, "default")

    for key, (lo, hi) in _BOUNDS.items():
        v = getattr(cfg, key)
        if v is not None and not (lo <= v <= hi):
            raise ConfigError(key, f"must be between {_num(lo)} and {_num(hi)}, got {v!r}", src(key))
    if cfg.jwt_algorithm not in _ALGORITHMS:
        raise ConfigError("jwt_algorithm", f"must be one of {', '.join(_ALGORITHMS)}", src("jwt_algorithm"))
    if cfg.jwt_algorithm.startswith("HS"):
        if cfg.jwt_secret is not None and len(cfg.jwt_secret.encode()) < 32:
            raise ConfigError("jwt_secret", "must be at least 32 bytes (RFC 7518 3.2)", src("jwt_secret"))
        if cfg.jwt_public_key is not None:
            raise ConfigError("jwt_public_key", f"is for RS256/ES256, not {cfg.jwt_algorithm}", src("jwt_public_key"))
    else:
        if cfg.jwt_public_key is None:
            raise ConfigError("jwt_public_key", f"is required with {cfg.jwt_algorithm}", src("jwt_algorithm"))
        if cfg.jwt_secret is not None:
            raise ConfigError("jwt_secret", f"is for HS* algorithms, not {cfg.jwt_algorithm}", src("jwt_secret"))
    if cfg.log_level not in _LOG_LEVELS:
        raise ConfigError("log_level", f"must be one of {', '.join(_LOG_LEVELS)}", src("log_level"))
    if cfg.postgres_dsn is not None and not cfg.postgres_dsn.startswith(("postgres://", "postgresql://")):
        raise ConfigError("postgres_dsn", "must start with postgresql:// or postgres://", src("postgres_dsn"))
    if cfg.redis_url is not None and not cfg.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("redis_url", "must start with redis://, rediss:// or unix://", src("redis_url"))
    if cfg.connection_timeout < cfg.heartbeat_interval:
        raise ConfigError(
            "connection_timeout", "must not be shorter than heartbeat_interval", src("connection_timeout")
        )
    if not cfg.data_dir:
        raise ConfigError("data_dir", "must not be empty", src("data_dir"))


def read_file(path: str) -> dict[str, Any]:
    """Read a TOML config file; keys are setting names (an optional [chathub] table)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    if "chathub" in data and isinstance(data["chathub"], dict):
        nested = data.pop("chathub")
        data = {**data, **nested}
    return data


def load(
    file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> HubConfig:
    """Build a validated ``HubConfig`` from a file, the environment and overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if file:
        for k, v in read_file(file).items():
            if k not in _FIELDS:
                raise ConfigError(k, "unknown setting", file)
            values[k] = _coerce(k, v, file)
            sources[k] = file
    for k in _FIELDS:
        ev = ENV_PREFIX + k.upper()
        if ev in env:
            values[k] = _coerce(k, env[ev], f"env {ev}")
            sources[k] = f"env {ev}"
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        values[k] = _coerce(k, v, "command line")
        sources[k] = "command line"
    cfg = dataclasses.replace(HubConfig(), **values)
    _validate(cfg, sources)
    return cfg


def describe(cfg: HubConfig) -> dict[str, Any]:
    """The settings as a dict, with secrets masked (safe to log)."""
    out = {}
    for k in _FIELDS:
        v = getattr(cfg, k)
        if k in _SECRET_KEYS and v is not None:
            v = "***"
        out[k] = v
    return out


def settings_table() -> list[tuple[str, str, Any]]:
    """(key, env var, default) for every setting, for docs and ``--help``."""
    d = HubConfig()
    return [(k, ENV_PREFIX + k.upper(), getattr(d, k)) for k in _FIELDS]
