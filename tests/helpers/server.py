"""Start a real chathub server process on a free port, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from chathub.auth import mint_token

TEST_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
TIMEOUT_SCALE = float(os.environ.get("CHATHUB_TEST_TIMEOUT_SCALE", "1"))


class ServerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, secret: str | None, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.secret = secret
        self.log = log
        self.http_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"

    def token(self, user_id: int, tenant_id: int = 0, **claims: Any) -> str:
        if self.secret is None:
            raise RuntimeError("dev-mode server: fetch a token from /dev/token")
        return mint_token(self.secret, user_id, tenant_id, **claims)

    def url(self, user_id: int, tenant_id: int = 0, **query: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"{self.ws_url}?token={self.token(user_id, tenant_id)}" + (f"&{q}" if q else "")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_server(
    tmp_path: Path,
    *,
    dev: bool = False,
    extra_env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] | list[str] = (),
    timeout: float = 30.0,
) -> ServerProcess:
    """Run ``python -m chathub serve --port 0`` with a data dir under ``tmp_path``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    log = tmp_path / f"server-{time.monotonic_ns()}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATHUB_") or k in (
        "CHATHUB_NO_EXTENSIONS", "CHATHUB_TEST_TIMEOUT_SCALE")}
    secret = None if dev else TEST_SECRET
    if secret is not None:
        env["CHATHUB_JWT_SECRET"] = secret
    env["CHATHUB_DATA_DIR"] = str(tmp_path / "data")
    # the limits throttle test traffic; tests of the limits turn them on again
    env["CHATHUB_RATE_LIMITS"] = "off"
    env.update(extra_env or {})
    if "CHATHUB_JWT_SECRET" in (extra_env or {}):
        secret = extra_env["CHATHUB_JWT_SECRET"]  # type: ignore[index]
    cmd = [sys.executable, "-m", "chathub", "serve", "--host", "127.0.0.1", "--port", "0",
           "--ready-file", str(ready), *extra_args]
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    fh.close()
    deadline = time.monotonic() + timeout * TIMEOUT_SCALE
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text().strip():
            return ServerProcess(proc, int(ready.read_text()), secret, log)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start in {timeout}s:\n{log.read_text(errors='replace')}")
