"""A private, throw-away PostgreSQL server for tests and benchmarks.

Uses the Debian PostgreSQL binaries (``/usr/lib/postgresql/<ver>/bin`` or
``CHATHUB_PG_BINDIR``). initdb/postgres refuse to run as root, so when we are root
every server command runs as the ``postgres`` system user (``runuser``/``su``) and the
data directory is a fresh temp dir owned by that user.

Usable from Python (``PrivatePostgres``) or the shell::

    python tests/store/pg_private.py start /tmp/pgdir   # prints the DSN
    python tests/store/pg_private.py stop /tmp/pgdir
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time

CMD_TIMEOUT = 60  # seconds for any single pg_ctl/initdb call


def find_bindir() -> str | None:
    env = os.environ.get("CHATHUB_PG_BINDIR")
    if env and os.path.exists(os.path.join(env, "pg_ctl")):
        return env
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    for c in cands:
        if os.path.exists(os.path.join(os.path.dirname(c), "initdb")):
            return os.path.dirname(c)
    return None


def unavailable_reason() -> str | None:
    """None when a private server can be started here, else why not."""
    if find_bindir() is None:
        return "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' system user to run the server"
        if not (shutil.which("runuser") or shutil.which("su")):
            return "running as root and neither runuser nor su is available"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    def __init__(self, datadir: str | None = None, *, port: int | None = None, fsync: bool = True):
        self.bindir = find_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL binaries not found")
        self._own_dir = datadir is None
        # As root the server runs as "postgres", which must be able to reach the
        # directory: use /tmp rather than a $TMPDIR that may sit under /root.
        tmp = os.environ.get("CHATHUB_PG_TMPDIR", "/tmp") if os.geteuid() == 0 else None
        self.base = datadir or tempfile.mkdtemp(prefix="chathub-pg-", dir=tmp)
        self.datadir = os.path.join(self.base, "data")
        self.sockdir = self.base
        self.logfile = os.path.join(self.base, "server.log")
        self.port = port or free_port()
        self.fsync = fsync
        self.as_root = os.geteuid() == 0

    # -- plumbing -------------------------------------------------------------------
    def _run(self, args: list[str], timeout: float = CMD_TIMEOUT, check: bool = True):
        if self.as_root:
            if shutil.which("runuser"):
                args = ["runuser", "-u", "postgres", "--", *args]
            else:
                import shlex

                args = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(args)]
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise RuntimeError(f"{args!r} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}\n{self.log_tail()}")
        return p

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _opts(self) -> str:
        o = f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.fsync:
            o += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        return o

    # -- lifecycle ------------------------------------------------------------------
    def init(self) -> None:
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            os.chmod(self.base, 0o700)
        self._run([
            os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
        ])

    def start(self) -> None:
        self._run([
            os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l", self.logfile,
            "-o", self._opts(), "-w", "-t", "30", "start",
        ])

    def stop(self, mode: str = "fast") -> None:
        self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "-t", "30", "stop"])

    def restart(self, mode: str = "fast") -> None:
        self._run([
            os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l", self.logfile,
            "-o", self._opts(), "-m", mode, "-w", "-t", "30", "restart",
        ])

    def is_running(self) -> bool:
        p = self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "status"], check=False)
        return p.returncode == 0

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("PostgreSQL did not come up:\n" + self.log_tail())

    def __enter__(self) -> "PrivatePostgres":
        self.init()
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def destroy(self) -> None:
        try:
            if os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
                self.stop("immediate")
        except Exception:
            pass
        if self._own_dir:
            shutil.rmtree(self.base, ignore_errors=True)


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("start", "stop"):
        print("usage: pg_private.py start|stop DIR [PORT]", file=sys.stderr)
        return 2
    cmd, d = argv[0], os.path.abspath(argv[1])
    if cmd == "start":
        os.makedirs(d, exist_ok=True)
        pg = PrivatePostgres(d, port=int(argv[2]) if len(argv) > 2 else None)
        if not os.path.exists(os.path.join(pg.datadir, "PG_VERSION")):
            pg.init()
        pg.start()
        with open(os.path.join(d, "port"), "w") as f:
            f.write(str(pg.port))
        print(pg.dsn)
    else:
        port = int(open(os.path.join(d, "port")).read())
        PrivatePostgres(d, port=port).stop("fast")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
