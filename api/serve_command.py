"""The processes that run the engine: `hookledger serve` (migrate, then the HTTP API
under uvicorn, with the projectors and destinations in-process) and `hookledger
project` (projectors and destinations, without HTTP)."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING

from ledger.command_line import AddCommand, is_loopback
from ledger.config import Config
from ledger.errors import ConfigError, HookledgerError
from ledger.terminal import err

if TYPE_CHECKING:
    from sqlalchemy import Engine


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    import uvicorn

    from api.app import startup_warnings
    from api.handover import Handover
    from ledger.recorder import make_engine
    from projections.adapters import load_adapters

    if not config.tokens and not is_loopback(args.host) and not args.insecure_no_auth:
        raise ConfigError(
            f"refusing to serve {args.host} with no [[tokens]] configured: the API would be "
            "open to the network. Configure tokens, bind 127.0.0.1, or pass --insecure-no-auth"
        )
    from destinations.spec import load_destinations

    projectors = load_adapters(config)  # a bad definition fails here, in one line
    destinations = load_destinations(config)
    _check_can_listen(args.host, args.port)  # before migrating: a busy port changes nothing
    engine = make_engine(config.database_url)
    try:
        _migrate_when_reachable(engine, args.wait_for_db)
        where = engine.url.render_as_string(hide_password=True)
    finally:
        engine.dispose()
    for warning in startup_warnings(config):
        err.print(f"warning: {warning}", style="yellow")
    Handover(
        config_path=os.path.abspath(config.path) if config.path else None,
        database_url=config.database_url,
        run_projectors=not args.no_projector,
        console_key=secrets.token_hex(32),
        head_timeout_s=config.server.body_timeout_seconds,
    ).export()
    raise_file_limit()
    working = [w for w, on in (("projectors", projectors), ("destinations", destinations)) if on]
    if args.no_projector or not working:
        workers = "no projectors"
    else:
        workers = f"{' and '.join(working)} in-process"
    err.print(f"hookledger serving on http://{args.host}:{args.port} (database {where}; {workers})")
    uvicorn.run(
        "api.app:app_from_handover",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        http="api.wire:HeadDeadlineProtocol",  # uvicorn never times out a request head
        log_level="info",
        timeout_graceful_shutdown=10,
    )
    return 0


def raise_file_limit(wanted: int = 65536) -> None:
    """Raise the soft limit on open files towards the hard one: each connection takes a
    descriptor, and the common soft default (1024) is what slow clients exhaust first."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _check_can_listen(host: str, port: int) -> None:
    """Fail in one line when `host:port` cannot be bound (in use, not ours, no such address)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise HookledgerError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as e:
            raise HookledgerError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _migrate_when_reachable(engine: Engine, wait_s: float) -> None:
    """Migrate, waiting up to `wait_s` for a database that is still starting or restarting."""
    from ledger import migrate
    from ledger.errors import StorageUnavailable

    deadline = time.monotonic() + wait_s
    while True:
        try:
            migrate.upgrade(engine)
            return
        except StorageUnavailable as e:
            if time.monotonic() >= deadline:
                raise
            err.print(f"waiting for the database: {e}", style="yellow")
            time.sleep(1.0)


def cmd_project(args: argparse.Namespace, config: Config) -> int:
    """Projectors and deliveries in this process until SIGTERM or SIGINT."""
    from destinations.spec import load_destinations
    from destinations.worker import DeliveryWorker, delivery_thread
    from ledger.command_line import open_engine
    from ledger.recorder import recorder_for
    from projections.adapters import load_adapters
    from projections.worker import Worker

    projectors, destinations = load_adapters(config), load_destinations(config)
    if args.only:
        unknown = [n for n in args.only if n not in projectors and n not in destinations]
        if unknown:
            raise ConfigError(f"no projection or destination named {unknown[0]!r} is configured")
        projectors = {n: p for n, p in projectors.items() if n in args.only}
        destinations = {n: d for n, d in destinations.items() if n in args.only}
    if not projectors and not destinations:
        raise ConfigError(
            f"{config.path or '<defaults>'}: no [projections.*] or [destinations.*] are configured"
        )
    engine = open_engine(config)
    worker = Worker(engine, projectors, idle_poll=0.25) if projectors else None
    deliveries = DeliveryWorker(engine, destinations) if destinations else None
    background = delivery_thread(deliveries) if deliveries is not None else None

    def wake() -> None:
        if worker is not None:
            worker.wake()
        if deliveries is not None:
            deliveries.wake()

    stopping = threading.Event()

    def on_signal(signum, _frame) -> None:
        stopping.set()
        for w in (worker, deliveries):
            if w is not None:
                w.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    listener = recorder_for(engine).listener(engine, wake)
    if listener is not None:
        listener.start()
    if background is not None:
        background.start()
    owner = worker.owner if worker is not None else deliveries.owner if deliveries else ""
    err.print(f"worker {owner} working: {', '.join([*projectors, *destinations])}")
    if worker is not None:
        worker.run()
    else:
        stopping.wait()
    if background is not None:
        background.stop()  # lets what is in flight finish and be recorded
    if listener is not None:
        listener.stop()
    err.print("worker stopped")
    return 0


def add_commands(add: AddCommand, common: argparse.ArgumentParser) -> None:
    """serve, project."""
    p = add(
        "serve", cmd_serve, "migrate, then serve the HTTP API (and run projectors, destinations)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="API processes (default 1)")
    p.add_argument(
        "--no-projector",
        action="store_true",
        help="do not run projectors or destinations in this process",
    )
    p.add_argument(
        "--wait-for-db",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="keep retrying an unreachable database this long at start (default 30)",
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback address with no [[tokens]] configured",
    )
    p = add(
        "project",
        cmd_project,
        "run projectors and destinations (no HTTP); any number of these may run",
    )
    p.add_argument(
        "--only", nargs="+", metavar="NAME", help="work only these projections and destinations"
    )
