"""``chathub serve``: build a node on the configured backends and run it on picows + uvloop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from importlib import resources
from typing import Any

import orjson
from picows import ws_create_server, WSUpgradeResponse

from chathub import __version__, speedups
from chathub.broker.memory import MemoryBroker
from chathub.config import HubConfig
from chathub.server.node import Node
from chathub.server.ws import make_listener_factory

log = logging.getLogger("chathub")

_STATIC = {
    b"/": ("index.html", "text/html; charset=utf-8"),
    b"/index.html": ("index.html", "text/html; charset=utf-8"),
    b"/app.js": ("app.js", "text/javascript; charset=utf-8"),
    b"/style.css": ("style.css", "text/css; charset=utf-8"),
}


def _load_static() -> dict[bytes, tuple[bytes, str]]:
    out = {}
    base = resources.files("chathub") / "static"
    for path, (name, ctype) in _STATIC.items():
        f = base / name
        if f.is_file():
            out[path] = (f.read_bytes(), ctype)
    return out


def make_http(node: Node) -> Any:
    static = _load_static()
    info = orjson.dumps(
        {"version": __version__, "dev_mode": node.cfg.dev_mode, "implementation": speedups.IMPLEMENTATION}
    )

    def json_response(obj: Any, status: int = 200) -> Any:
        body = obj if isinstance(obj, bytes) else orjson.dumps(obj)
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
        if status == 200:
            return WSUpgradeResponse.create_ok_response(body, headers)
        return WSUpgradeResponse.create_error_response(status, body, headers)

    def http(path: bytes, q: dict[str, list[str]]) -> Any:
        hit = static.get(path)
        if hit is not None:
            body, ctype = hit
            return WSUpgradeResponse.create_ok_response(body, {"Content-Type": ctype, "Cache-Control": "no-cache"})
        if path == b"/info":
            return json_response(info)
        if path == b"/healthz":
            return json_response({"ok": node.started, "connections": len(node.hub.conns)})
        if path == b"/dev/token" and node.cfg.dev_mode:
            try:
                user = int(q.get("user", ["1"])[0])
                tenant = int(q.get("tenant", ["0"])[0])
                if not (0 <= user < 2**63 and 0 <= tenant < 2**63):
                    raise ValueError
            except ValueError:
                return json_response({"error": "user and tenant must be non-negative integers"}, 400)
            return json_response({"token": node.token_for(user, tenant), "user_id": user, "tenant_id": tenant})
        return None

    return http


def build_node(cfg: HubConfig) -> Node:
    """The composition root: embedded backends unless PostgreSQL / Redis are configured."""
    from chathub.store import open_store

    store = open_store(
        postgres_dsn=cfg.postgres_dsn,
        data_dir=cfg.data_dir,
        retention_max_age_s=cfg.retention_max_age_s,
        retention_max_per_room=cfg.retention_max_per_room,
        migrate=cfg.migrate_on_start,
        **(
            {}
            if cfg.postgres_dsn
            else {"cache_kib": cfg.sqlite_cache_kib, "commit_interval": cfg.sqlite_commit_interval_ms / 1000}
        ),
    )
    if cfg.redis_url:
        log.warning("redis_url is set, but the Redis broker is not in this version; using the in-process broker")
    broker = MemoryBroker()
    return Node(cfg, store, broker)


def freeze_startup_heap() -> None:
    """What start-up made (modules, config, store, server: ~30,000 GC-tracked objects)
    lives as long as the process: out of the cyclic GC's sight, a full collection walks
    only what connections and messages made since (otherwise ~6 ms more per full
    collection). ``chathub serve`` calls this once it listens; the store benchmark too,
    once its store is open."""
    gc.collect()
    gc.freeze()


async def run(cfg: HubConfig, *, ready_file: str | None = None) -> int:
    node = build_node(cfg)
    try:
        await node.start()
    except Exception as e:
        print(f"chathub: cannot open the message store: {e}", file=sys.stderr)
        return 1
    server = await ws_create_server(
        make_listener_factory(node, make_http(node)),
        cfg.host,
        cfg.port,
        max_frame_size=cfg.max_message_size,
        websocket_handshake_timeout=cfg.auth_timeout,
        read_buffer_init_size=2048,
        use_aiofastnet=False,
        # an adapter: with a plain Logger picows makes a child Logger per connection (0.7 KB)
        logger_name=logging.LoggerAdapter(logging.getLogger("picows.chathub"), {}),
    )
    port = server.sockets[0].getsockname()[1]
    host = cfg.host
    freeze_startup_heap()
    print(f"chathub {__version__} ({speedups.describe()}) listening on http://{host}:{port}/  (WebSocket: ws://{host}:{port}/ws)", flush=True)
    store_desc = "PostgreSQL" if cfg.postgres_dsn else f"SQLite in {os.path.abspath(cfg.data_dir)}"
    print(f"store: {store_desc}; broker: in-process", flush=True)
    if cfg.dev_mode:
        print("DEV MODE: no jwt_secret configured; this run uses a generated secret:", flush=True)
        print(f"  CHATHUB_JWT_SECRET={node.dev_secret}", flush=True)
        print(f"  token for user 1: {node.token_for(1)}", flush=True)
        print(f"  open http://{host}:{port}/ in a browser to chat", flush=True)
    if ready_file:
        with open(ready_file, "w") as fh:
            fh.write(str(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("chathub: shutting down", flush=True)
    server.close()
    await node.stop()
    return 0


def serve(cfg: HubConfig, *, ready_file: str | None = None) -> int:
    import uvloop

    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if cfg.log_level != "debug":
        # picows logs every accepted connection at INFO: too much at 20,000 connections
        logging.getLogger("picows").setLevel(logging.WARNING)
    return uvloop.run(run(cfg, ready_file=ready_file))
