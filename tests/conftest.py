"""Shared fixtures: both backends, migrated engines, real server processes.

Every contract test runs on SQLite and on a throwaway PostgreSQL. A missing
PostgreSQL is a failure, never a skip.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from ledger import migrate
from ledger.config import Config, load_config
from ledger.recorder import make_engine
from tests.pg import ThrowawayPostgres, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def pg_url(postgres) -> str:
    """A fresh PostgreSQL database, for tests about PostgreSQL only."""
    return postgres.create_database()


@pytest.fixture
def engine(db_url) -> Iterator[Engine]:
    """A migrated engine on each backend."""
    eng = make_engine(db_url)
    migrate.upgrade(eng)
    yield eng
    eng.dispose()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def config_from(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    """A Config parsed from TOML text, with an explicit environment (no os.environ edits)."""
    file = write_config(tmp_path / "hookledger.toml", text)
    return load_config(str(file), env or {})


class ServerProcess:
    """`hookledger serve` as a real uvicorn process on a free port."""

    def __init__(self, config_path: Path, env: dict[str, str], workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = config_path.parent / f"serve-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            "api.cli",
            "serve",
            "--config",
            str(config_path),
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--no-projector",
        ]
        self._log_file = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=str(config_path.parent),
            start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group (uvicorn and its workers)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()


@pytest.fixture
def serve(tmp_path) -> Iterator:
    """Start real servers: `serve(config_text, env={...}, workers=1)`."""
    started: list[ServerProcess] = []

    def start(text: str, env: dict[str, str] | None = None, workers: int = 1) -> ServerProcess:
        path = write_config(tmp_path / f"hookledger-{len(started)}.toml", text)
        server = ServerProcess(path, env or {}, workers)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def make_client(tmp_path, db_url) -> Iterator:
    """In-process app clients on each backend: `make_client(config_text, env={...})`."""
    from starlette.testclient import TestClient

    from api.app import create_app

    clients: list[TestClient] = []

    def make(text: str, env: dict[str, str] | None = None) -> TestClient:
        cfg = config_from(tmp_path, text, {"HOOKLEDGER_DATABASE_URL": db_url, **(env or {})})
        # a loopback Host: with no tokens any other name is 421 misdirected_host
        client = TestClient(create_app(cfg, migrate_on_start=True), base_url="http://localhost")
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url_factory(request, tmp_path_factory) -> Callable[[], str]:
    """Fresh databases on demand (for hypothesis tests that need one per example)."""
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path_factory.mktemp('db') / 'ledger.db'}"
    server = request.getfixturevalue("postgres")
    return server.create_database
