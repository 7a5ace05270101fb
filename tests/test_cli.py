"""The chathub command: --version, check-config, token, start-up errors (exit 2, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from chathub import config
from chathub.auth import verify_token

SECRET = "cli-test-secret-0123456789abcdefghijklmnop"


def chathub(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("CHATHUB_") or k == "CHATHUB_NO_EXTENSIONS"}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "chathub", *args], capture_output=True, text=True,
                          env=e, timeout=timeout, stdin=subprocess.DEVNULL)


def test_version_names_the_implementation():
    r = chathub("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("chathub 0.")
    expected = "python" if os.environ.get("CHATHUB_NO_EXTENSIONS", "0") not in ("", "0") else "compiled"
    assert f"({expected}" in r.stdout


@pytest.mark.parametrize(
    "env, key",
    [
        ({"CHATHUB_PORT": "eighty"}, "port"),
        ({"CHATHUB_PORT": "70000"}, "port"),
        ({"CHATHUB_MAX_MESSAGE_SIZE": "-1"}, "max_message_size"),
        ({"CHATHUB_JWT_SECRET": "short"}, "jwt_secret"),
        ({"CHATHUB_JWT_ALGORITHM": "none"}, "jwt_algorithm"),
        ({"CHATHUB_ENABLE_COMPRESSION": "maybe"}, "enable_compression"),
        ({"CHATHUB_POSTGRES_DSN": "mysql://x"}, "postgres_dsn"),
        ({"CHATHUB_HEARTBEAT_INTERVAL": "600", "CHATHUB_CONNECTION_TIMEOUT": "300"}, "connection_timeout"),
    ],
)
def test_invalid_setting_stops_startup_with_exit_2(env, key, tmp_path):
    r = chathub("serve", "--data-dir", str(tmp_path), env=env)
    assert r.returncode == 2
    assert f"'{key}'" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_config_file_env_and_flags_precedence(tmp_path):
    f = tmp_path / "hub.toml"
    f.write_text('port = 9001\nmax_rooms_per_connection = 7\nheartbeat_interval = 10\n')
    cfg = config.load(str(f), env={})
    assert (cfg.port, cfg.max_rooms_per_connection, cfg.heartbeat_interval) == (9001, 7, 10.0)
    cfg = config.load(str(f), env={"CHATHUB_PORT": "9002"})
    assert cfg.port == 9002 and cfg.max_rooms_per_connection == 7
    cfg = config.load(str(f), env={"CHATHUB_PORT": "9002"}, overrides={"port": 9003})
    assert cfg.port == 9003


def test_defaults_are_the_seed_hubconfig():
    cfg = config.load(env={})
    assert (cfg.max_connections_per_user, cfg.max_rooms_per_connection, cfg.message_queue_size) == (3, 50, 1000)
    assert (cfg.heartbeat_interval, cfg.connection_timeout, cfg.rate_limit_window) == (30, 300, 60)
    assert cfg.max_message_size == 1024 * 1024 and cfg.enable_compression is True
    assert cfg.port == 8080 and cfg.data_dir == "./chathub-data" and cfg.dev_mode


def test_check_config(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(f'jwt_secret = "{SECRET}"\nport = 9000\n')
    r = chathub("check-config", str(good))
    assert r.returncode == 0 and "port = 9000" in r.stdout
    assert SECRET not in r.stdout  # secrets are masked
    bad = tmp_path / "bad.toml"
    bad.write_text('max_rooms_per_connection = "many"\n')
    r = chathub("check-config", str(bad))
    assert r.returncode == 2 and "'max_rooms_per_connection'" in r.stderr and "Traceback" not in r.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 1\n")
    r = chathub("check-config", str(unknown))
    assert r.returncode == 2 and "'colour'" in r.stderr and "unknown setting" in r.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("port = = 1\n")
    r = chathub("check-config", str(broken))
    assert r.returncode == 2 and "not valid TOML" in r.stderr
    r = chathub("check-config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_token_mints_from_configured_secret():
    r = chathub("token", "--user", "42", "--tenant", "1", env={"CHATHUB_JWT_SECRET": SECRET})
    assert r.returncode == 0
    claims = verify_token(r.stdout.strip(), config.load(env={"CHATHUB_JWT_SECRET": SECRET}))
    assert (claims.user_id, claims.tenant_id) == (42, 1)
    r = chathub("token", "--user", "42")
    assert r.returncode == 2 and "CHATHUB_JWT_SECRET" in r.stderr


def test_every_setting_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    for key, env, _default in config.settings_table():
        assert f"| `{key}` | `{env}` |" in doc, key
