"""Locust load test of chathub: users who chat, type and read, timed end to end.

    pip install locust websocket-client
    export CHATHUB_JWT_SECRET=…   # the server's secret (at least 32 bytes)
    locust -f load_tests/locustfile.py --headless -u 200 -r 50 --run-time 1m \\
           --host http://127.0.0.1:8080 --csv out

Each simulated user mints its own token (HS256 with ``CHATHUB_JWT_SECRET``; user ids
from ``LOCUST_USER_BASE``, default 5,000,000, one per user), opens
``ws://HOST/ws?token=…`` with ``websocket-client`` (gevent-friendly once locust has
patched the socket module), waits for ``ready``, joins one of ``LOCUST_ROOMS`` rooms
(default 5: ``load-0`` … ``load-4``), then loops over its tasks:

* ``send``    — a chat message; timed from the write to its ``send`` reply (stored and
                acknowledged) → locust request ``WS send``;
* ``typing``  — ``typing start`` (no reply; timed write) → ``WS typing``;
* ``read``    — a read receipt for the last seq seen → ``WS read`` (reply round trip);
* ``history`` — the last 20 messages → ``WS history``.

Receivers time the other side too: every message carries its send time, and a sample
of users (``LOCUST_DELIVERY_SAMPLE``, default 0.2) reports the time from the sender's
write to the message arriving at them as ``WS deliver`` (all users run on one host, so
their clocks agree). A reply with ``"ok":false``, a timeout (``LOCUST_REPLY_TIMEOUT``,
default 10 s) or a dropped connection is a failure. Commands that the server answers
``rate_limited`` count as failures named after the code, so throttling shows up.

Bounded: the host must be a loopback address (127.0.0.0/8, localhost or ::1), and a run
started without ``--run-time`` is stopped after ``LOCUST_MAX_SECONDS`` (default 600 s).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import random
import time
from typing import Any
from urllib.parse import urlsplit

import gevent
import websocket  # websocket-client
from gevent.event import AsyncResult
from locust import User, between, events, task
from locust.exception import StopUser

SECRET = os.environ.get("CHATHUB_JWT_SECRET", "")
ROOMS = int(os.environ.get("LOCUST_ROOMS", "5"))
USER_BASE = int(os.environ.get("LOCUST_USER_BASE", "5000000"))
DELIVERY_SAMPLE = float(os.environ.get("LOCUST_DELIVERY_SAMPLE", "0.2"))
REPLY_TIMEOUT = float(os.environ.get("LOCUST_REPLY_TIMEOUT", "10"))
MAX_SECONDS = float(os.environ.get("LOCUST_MAX_SECONDS", "600"))
_user_ids = itertools.count(USER_BASE)


def mint(user_id: int) -> str:
    try:
        from chathub.auth import mint_token
    except ImportError:  # a load-test machine without chathub: sign the same claims with PyJWT
        import jwt

        now = int(time.time())
        return jwt.encode({"sub": str(user_id), "tid": 0, "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")
    return mint_token(SECRET, user_id, 0, ttl_s=3600)


def is_loopback(host: str) -> bool:
    name = urlsplit(host).hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@events.init.add_listener
def _check(environment: Any, **_: Any) -> None:
    host = environment.host or ""
    if host and not is_loopback(host):
        raise SystemExit(f"load_tests/locustfile.py: refusing host {host!r}: only 127.0.0.1/localhost")
    if len(SECRET.encode()) < 32:
        raise SystemExit("load_tests/locustfile.py: set CHATHUB_JWT_SECRET to the server's secret (≥ 32 bytes)")


@events.test_start.add_listener
def _bound(environment: Any, **_: Any) -> None:
    opts = getattr(environment, "parsed_options", None)
    if opts is not None and not getattr(opts, "run_time", None) and environment.runner is not None:
        def stop() -> None:
            print(f"locustfile: no --run-time given; stopping after {MAX_SECONDS:.0f} s")
            environment.runner.quit()
        gevent.spawn_later(MAX_SECONDS, stop)


class ChatUser(User):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        if not is_loopback(self.host or ""):
            raise StopUser()
        self.user_id = next(_user_ids)
        self.room = f"load-{random.randrange(ROOMS)}"
        self.samples_delivery = random.random() < DELIVERY_SAMPLE
        self.pending: dict[int, AsyncResult] = {}
        self.ids = itertools.count(1)
        self.last_seq = 0
        self.ws: websocket.WebSocket | None = None
        self.reader: gevent.Greenlet | None = None
        self.ready = AsyncResult()
        base = urlsplit(self.host)
        url = f"ws://{base.hostname}:{base.port or 80}/ws?token={mint(self.user_id)}"
        t0 = time.perf_counter()
        try:
            self.ws = websocket.create_connection(url, timeout=REPLY_TIMEOUT, enable_multithread=True)
            self.reader = gevent.spawn(self._read_loop)
            self.ready.get(timeout=REPLY_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - reported as a failed connect
            self._fire("connect", t0, 0, e)
            raise StopUser() from None
        self._fire("connect", t0, 0, None)
        self._request("join", {"op": "join", "room": self.room})

    def on_stop(self) -> None:
        if self.reader is not None:
            self.reader.kill(block=False)
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------------ tasks

    @task(5)
    def send(self) -> None:
        text = f"hello from {self.user_id} @{time.time():.6f}"
        self._request("send", {"op": "send", "room": self.room, "text": text,
                               "client_msg_id": f"{self.user_id}-{time.time_ns()}"})

    @task(2)
    def typing(self) -> None:
        t0 = time.perf_counter()
        try:
            self._write({"op": "typing", "room": self.room, "state": "start"})
        except Exception as e:  # noqa: BLE001
            self._fire("typing", t0, 0, e)
            raise StopUser() from None
        self._fire("typing", t0, 0, None)

    @task(2)
    def read(self) -> None:
        if self.last_seq > 0:
            self._request("read", {"op": "read", "room": self.room, "seq": self.last_seq})

    @task(1)
    def history(self) -> None:
        self._request("history", {"op": "history", "room": self.room, "limit": 20})

    # ------------------------------------------------------------------ plumbing

    def _fire(self, name: str, t0: float, length: int, exc: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type="WS", name=name, response_time=(time.perf_counter() - t0) * 1000.0,
            response_length=length, exception=exc, context={},
        )

    def _write(self, obj: dict[str, Any]) -> None:
        assert self.ws is not None
        self.ws.send(json.dumps(obj, separators=(",", ":")))

    def _request(self, name: str, cmd: dict[str, Any]) -> None:
        """Send a command with an id and time it until its reply."""
        cid = next(self.ids)
        cmd["id"] = cid
        res = AsyncResult()
        self.pending[cid] = res
        t0 = time.perf_counter()
        try:
            self._write(cmd)
            reply, n = res.get(timeout=REPLY_TIMEOUT)
        except gevent.Timeout:
            self._fire(name, t0, 0, TimeoutError(f"no reply within {REPLY_TIMEOUT:.0f} s"))
            return
        except Exception as e:  # noqa: BLE001 - the connection is gone
            self._fire(name, t0, 0, e)
            raise StopUser() from None
        finally:
            self.pending.pop(cid, None)
        if reply.get("ok"):
            self._fire(name, t0, n, None)
        else:
            err = reply.get("error") or {}
            self._fire(name, t0, n, RuntimeError(f"{err.get('code')}: {err.get('message')}"))

    def _read_loop(self) -> None:
        assert self.ws is not None
        try:
            while True:
                data = self.ws.recv()
                if not data:
                    break
                if isinstance(data, bytes):  # gzip frames are only sent when asked for
                    continue
                msg = json.loads(data)
                ev = msg.get("ev")
                if ev is None:
                    res = self.pending.get(msg.get("id"))  # type: ignore[arg-type]
                    if res is not None:
                        res.set((msg, len(data)))
                    if msg.get("ok") and msg.get("seq") and msg.get("room") == self.room:
                        self.last_seq = max(self.last_seq, msg["seq"])
                elif ev == "ready":
                    self.ready.set(True)
                elif ev == "message":
                    self.last_seq = max(self.last_seq, msg.get("seq", 0))
                    if self.samples_delivery:
                        text = msg.get("text", "")
                        at = text.rfind("@")
                        if at >= 0:
                            try:
                                sent = float(text[at + 1:])
                            except ValueError:
                                continue
                            self.environment.events.request.fire(
                                request_type="WS", name="deliver", response_time=(time.time() - sent) * 1000.0,
                                response_length=len(data), exception=None, context={},
                            )
                elif ev == "error" and not self.ready.ready():
                    self.ready.set_exception(RuntimeError(msg.get("message", "error")))
        except Exception as e:  # noqa: BLE001 - the socket closed: fail whoever waits
            for res in list(self.pending.values()):
                if not res.ready():
                    res.set_exception(ConnectionError(str(e) or type(e).__name__))
            if not self.ready.ready():
                self.ready.set_exception(ConnectionError(str(e) or type(e).__name__))
