"""A throwaway PostgreSQL server for the tests, from the `initdb` and `pg_ctl` binaries.

PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` system user. It listens on 127.0.0.1 at a free port with trust
authentication and lives in a temporary directory removed at stop.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg


def find_binary(name: str) -> str:
    """The path of a PostgreSQL binary, on PATH or in Debian's versioned directory."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if candidates:
        return candidates[-1]
    raise RuntimeError(
        f"PostgreSQL's {name} was not found: install Debian's postgresql package "
        "(`make test` does this)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    """One PostgreSQL cluster, started and stopped by the tests."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hookledger-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self._counter = 0

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        cmd = list(argv)
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    def start(self) -> ThrowawayPostgres:
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        result = self._run(
            find_binary("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()}")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=on -c max_connections=200 -c shared_buffers=128MB"
        )
        self.restart_options = options
        result = self._run(
            find_binary("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        if result.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {result.stderr.strip()} {log[-2000:]}")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        self._counter += 1
        name = f"t{os.getpid()}_{self._counter}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def restart(self, mode: str = "immediate") -> None:
        """Restart the server (`immediate` is a crash-like stop)."""
        result = self._run(
            find_binary("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            self.restart_options,
            "-l",
            str(self.root / "log"),
            "-m",
            mode,
            "-w",
            "restart",
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {result.stderr.strip()}")

    def stop(self) -> None:
        self._run(find_binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
