"""A real PostgreSQL server for tests: a throwaway cluster in a temp dir, on loopback, with
a password, run by an unprivileged user (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER = "study"
PASSWORD = "Pg-S3cr3t-7c1e"  # distinctive, so a scan for it cannot match by chance
DATABASE = "optuna"


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str
    password: str
    database: str

    @property
    def url(self) -> str:
        return (f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/"
                f"{self.database}")


def bin_dir() -> Path | None:
    """PostgreSQL's server programs (Debian keeps them out of PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> str | None:
    """The unprivileged account the server runs as when the tests run as root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no unprivileged account (postgres, nobody)")


@contextlib.contextmanager
def server() -> Iterator[Server]:
    """Start a PostgreSQL cluster with password authentication; stop and delete it after."""
    bindir = bin_dir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL's initdb not found (Debian: apt-get install "
                                "postgresql)")
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="study-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if user:
        ids = pwd.getpwnam(user)
        for p in (root, sock, pwfile):
            os.chown(p, ids.pw_uid, ids.pw_gid)
    port = _free_port()

    def call(*args: str) -> None:
        subprocess.run(list(args), check=True, capture_output=True, text=True, user=user,
                       cwd=root)

    try:
        call(str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
             "-A", "scram-sha-256", "--no-sync")
        pwfile.unlink()
        call(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l",
             str(root / "server.log"), "-o",
             f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off", "start")
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                        USER, DATABASE], check=True, capture_output=True, env=env)
        yield Server("127.0.0.1", port, USER, PASSWORD, DATABASE)
    finally:
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                call(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
