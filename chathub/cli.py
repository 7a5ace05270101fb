"""The ``chathub`` command: serve, check-config, token, migrate, --version."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Sequence

from chathub import __version__
from chathub import config as config_mod


def _version() -> str:
    from chathub import speedups

    return f"chathub {__version__} ({speedups.describe()})"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (CHATHUB_* env vars override it)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chathub", description="A real-time chat hub over WebSocket.")
    ap.add_argument("--version", action="store_true", help="print the version and the active implementation")
    sub = ap.add_subparsers(dest="command")

    s = sub.add_parser("serve", help="run the hub")
    _add_common(s)
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to listen on (default 8080; 0 picks a free one)")
    s.add_argument("--data-dir", help="directory of the embedded SQLite store (default ./chathub-data)")
    s.add_argument("--ready-file", help=argparse.SUPPRESS)

    c = sub.add_parser("check-config", help="validate a config file (and the environment)")
    c.add_argument("file", nargs="?", help="TOML file to check")

    t = sub.add_parser("token", help="mint a JWT from the configured secret")
    _add_common(t)
    t.add_argument("--user", type=int, required=True)
    t.add_argument("--tenant", type=int, default=0)
    t.add_argument("--name")
    t.add_argument("--role", action="append", default=[], choices=["admin", "moderator"])
    t.add_argument("--ttl", type=int, default=24 * 3600, help="seconds until the token expires")

    m = sub.add_parser("migrate", help="apply pending schema migrations to the configured store")
    _add_common(m)
    return ap


def _load(args: argparse.Namespace, overrides: dict | None = None) -> config_mod.HubConfig:
    return config_mod.load(getattr(args, "config", None) or getattr(args, "file", None), overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.version:
        print(_version())
        return 0
    if args.command is None:
        ap.print_help()
        return 2
    try:
        if args.command == "serve":
            cfg = _load(args, {"host": args.host, "port": args.port, "data_dir": args.data_dir})
        else:
            cfg = _load(args)
    except config_mod.ConfigError as e:
        print(f"chathub: {e}", file=sys.stderr)
        return 2

    if args.command == "serve":
        from chathub.server.app import serve

        try:
            return serve(cfg, ready_file=args.ready_file)
        except OSError as e:
            print(f"chathub: cannot listen on {cfg.host}:{cfg.port}: {e.strerror}", file=sys.stderr)
            return 1
    if args.command == "check-config":
        print(f"configuration OK{' (' + args.file + ')' if args.file else ''}")
        for k, v in config_mod.describe(cfg).items():
            print(f"  {k} = {v!r}")
        return 0
    if args.command == "token":
        from chathub import auth

        if not cfg.jwt_algorithm.startswith("HS") or cfg.jwt_secret is None:
            print(
                "chathub: no jwt_secret configured; set CHATHUB_JWT_SECRET (the dev-mode server prints its secret)",
                file=sys.stderr,
            )
            return 2
        print(auth.mint_token(cfg.jwt_secret, args.user, args.tenant, ttl_s=args.ttl, name=args.name,
                              roles=args.role, algorithm=cfg.jwt_algorithm))
        return 0
    if args.command == "migrate":
        from chathub.store import open_store

        async def _migrate() -> None:
            store = open_store(postgres_dsn=cfg.postgres_dsn, data_dir=cfg.data_dir)
            await store.open()
            await store.close()

        asyncio.run(_migrate())
        print("migrations applied")
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
