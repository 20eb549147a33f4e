"""Destination commands of the `hookledger` CLI: `destinations` (a row each, and the
operator's actions) and `listen --forward-to URL`, the developer's forwarder."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.command_line import AddCommand, open_engine, positive_int
from ledger.config import Config
from ledger.errors import ConfigError, HookledgerError
from ledger.terminal import err, out, text

if TYPE_CHECKING:
    from destinations.spec import Destination

# The engine's modules are imported by the commands that use them: `--help` stays quick.
ACTIONS = ("replay", "pause", "resume", "retry", "skip")
LISTEN_STATE = ".hookledger-listen.json"
LISTEN_WAIT_S = 25


def _spec(config: Config, name: str) -> Destination:
    from destinations.spec import load_destinations

    specs = load_destinations(config)
    if name not in specs:
        raise ConfigError(f"no destination named {name!r} is configured")
    return specs[name]


def cmd_destinations(args: argparse.Namespace, config: Config) -> int:
    words = list(args.words)
    if words and words[0] in ACTIONS:
        if len(words) != 2:
            raise HookledgerError(f"usage: hookledger destinations {words[0]} NAME")
        return _act(args, config, words[0], words[1])
    if len(words) > 1:
        raise HookledgerError(
            f"unknown action {words[0]!r} (expected one of: {', '.join(ACTIONS)})"
        )
    return _show(config, words[0] if words else None)


def _show(config: Config, name: str | None) -> int:
    from rich.table import Table

    from destinations import store
    from destinations.spec import load_destinations
    from ledger.recorder import translated

    specs = load_destinations(config)
    if name is not None:
        specs = {name: _spec(config, name)}
    engine = open_engine(config)
    with translated():
        entries = store.status(engine, specs)
    table = Table()
    for header in ("name", "kind", "state", "position", "head", "lag", "retrying", "dead"):
        table.add_column(header, no_wrap=True)
    table.add_column("last attempt")
    table.add_column("reason")
    for e in entries:
        last = e["last_attempt"]
        table.add_row(
            text(e["name"]),
            text(e["kind"]),
            text(e["state"]),
            "-" if e["position"] is None else str(e["position"]),
            str(e["head"]),
            "-" if e["lag"] is None else str(e["lag"]),
            str(e["in_flight"]),
            str(e["dead"]),
            text("" if last is None else _attempt_line(last)),
            text(e["reason"] or ""),
        )
    out.print(table)
    if not entries:
        err.print("no destinations are configured")
    return 1 if any(e["state"] == "failed" for e in entries) else 0


def _attempt_line(a: dict[str, Any]) -> str:
    answer = a["error"] or a["status"]
    said = f" ({answer})" if answer is not None else ""
    return f"#{a['position']} {a['outcome']}{said} {a['started_at']}"


def _act(args: argparse.Namespace, config: Config, action: str, name: str) -> int:
    from destinations import store
    from ledger.recorder import translated

    spec = _spec(config, name)
    engine = open_engine(config)
    with translated():
        if action == "replay":
            if args.start is None:
                raise HookledgerError("replay needs --from P, the first position to hand over")
            store.replay(engine, spec.name, args.start)
        else:
            getattr(store, action)(engine, spec.name)
    said = {
        "replay": f"every matching event from position {args.start} is handed over again",
        "pause": "paused: nothing is handed over until `resume`",
        "resume": "resumed",
        "retry": "the dead event is attempted again now",
        "skip": "the dead event is recorded among the dead letters; the next ones go on",
    }[action]
    out.print(f"{spec.name}: {said}", markup=False)
    return 0


# --- listen ---------------------------------------------------------------------------


def cmd_listen(args: argparse.Namespace, config: Config) -> int:
    """Follow a running hookledger's log over HTTP and POST each event to a local URL."""
    import httpx
    import orjson

    server = args.url.rstrip("/")
    token = args.token or os.environ.get("HOOKLEDGER_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    state = Path(args.state)
    types = set(args.type or ())
    with httpx.Client(headers=headers, timeout=LISTEN_WAIT_S + 10, trust_env=False) as api:
        after = _listen_start(api, server, state, args.start)
        err.print(
            f"forwarding events after position {after} from {server} to {args.forward_to} "
            "(Ctrl-C to stop)",
            markup=False,
        )
        query: dict[str, Any] = {"wait": LISTEN_WAIT_S, "limit": 100}
        if args.source:
            query["source"] = args.source
        if len(types) == 1:
            query["type"] = next(iter(types))
        interrupt = _Interrupt()
        with httpx.Client(timeout=30, trust_env=False, follow_redirects=False) as target:
            try:
                while not interrupt.asked:
                    events = _get(api, f"{server}/v1/events", {**query, "after": after})["events"]
                    for meta in events:
                        with interrupt.deferred():  # an event is forwarded and kept whole
                            if not types or meta["event_type"] in types:
                                _forward(api, target, server, args.forward_to, meta)
                            after = meta["position"]
                            state.write_bytes(orjson.dumps({"server": server, "position": after}))
                        if interrupt.asked:
                            break
            except KeyboardInterrupt:
                pass
            err.print(f"stopped after position {after}; `listen` resumes there")
            return 0


class _Interrupt:
    """Ctrl-C: at once while waiting for events, after the event being forwarded else
    (so its line is printed and its position kept, and a restart does not send it again)."""

    def __init__(self) -> None:
        import signal

        self.asked = False
        self._deferring = False
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.asked = True
        if not self._deferring:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False


def _listen_start(api, server: str, state: Path, start: int | None) -> int:
    """The position to follow from: --from P (inclusive), else the state file's, else the head."""
    import orjson

    if start is not None:
        return start - 1
    if state.is_file():
        try:
            saved = orjson.loads(state.read_bytes())
            if saved.get("server") == server and isinstance(saved.get("position"), int):
                return int(saved["position"])
        except (orjson.JSONDecodeError, AttributeError):
            raise HookledgerError(f"{state}: not a listen state file; remove it") from None
    return int(_get(api, f"{server}/v1/ledger", {})["head"])


def _get(api, url: str, query: dict[str, Any]) -> Any:
    """The JSON of a GET that answers 200."""
    return _fetch(api, url, query).json()


def _fetch(api, url: str, query: dict[str, Any] | None = None, also: tuple[int, ...] = ()):
    """A GET answering 200 (or a status in `also`); the server being away or busy
    (a refused connection, 502-504) is waited out, anything else is a one-line error."""
    import httpx

    while True:
        try:
            response = api.get(url, params=query)
        except httpx.TransportError as e:
            err.print(f"cannot reach {url}: {e or type(e).__name__}; retrying", markup=False)
            time.sleep(2)
            continue
        if response.status_code == 200 or response.status_code in also:
            return response
        if response.status_code in (502, 503, 504):
            time.sleep(2)
            continue
        try:
            detail = response.json().get("detail") or response.text
        except ValueError:
            detail = response.text[:200]
        raise HookledgerError(f"{url}: {response.status_code} {detail}")


def _forward(api, target, server: str, url: str, meta: dict[str, Any]) -> None:
    """POST one event's stored body to `url`; print one line with what came of it."""
    import httpx

    from destinations.senders import header_text

    position = meta["position"]
    raw = _fetch(api, f"{server}/v1/events/{position}/raw", also=(410,))  # 410: erased
    body = raw.content if raw.status_code == 200 else b""
    headers = {
        "content-type": meta.get("content_type") or "application/octet-stream",
        "webhook-id": f"hl-{position}",
        "ledger-position": str(position),
        "ledger-source": header_text(meta["source"]),
    }
    if meta.get("event_type") is not None:
        headers["ledger-event-type"] = header_text(meta["event_type"])
    if meta.get("event_id") is not None:
        headers["ledger-event-id"] = header_text(meta["event_id"])
    if raw.status_code == 410:
        headers["ledger-body-erased"] = "true"
    started = time.perf_counter()
    try:
        answer = str(target.post(url, content=body, headers=headers).status_code)
    except httpx.HTTPError as e:
        answer = f"failed: {type(e).__name__}: {e}" if str(e) else f"failed: {type(e).__name__}"
    ms = (time.perf_counter() - started) * 1000
    what = " ".join(
        text(v).plain for v in (meta["source"], meta.get("event_type"), meta.get("event_id")) if v
    )
    out.print(f"#{position} {what} -> {answer} ({ms:.0f} ms)", markup=False, highlight=False)


def add_commands(add: AddCommand, common: argparse.ArgumentParser) -> None:
    """destinations, listen."""
    p = add(
        "destinations",
        cmd_destinations,
        "a row per destination; or `destinations replay NAME --from P`, "
        "`pause NAME`, `resume NAME`, `retry NAME`, `skip NAME`",
    )
    p.add_argument(
        "words",
        nargs="*",
        metavar="[ACTION] NAME",
        help=f"a destination's name, or an action ({', '.join(ACTIONS)}) and a name",
    )
    p.add_argument(
        "--from",
        dest="start",
        type=positive_int,
        metavar="P",
        help="replay: the first position handed over again",
    )
    p = add(
        "listen",
        cmd_listen,
        "follow a running hookledger and forward each event to a local URL",
    )
    p.add_argument("--forward-to", required=True, metavar="URL", help="where to POST each event")
    p.add_argument("--source", help="only this source's events")
    p.add_argument("--type", action="append", metavar="T", help="only this type (repeatable)")
    p.add_argument(
        "--from",
        dest="start",
        type=positive_int,
        metavar="P",
        help="start at this position (inclusive); default: where the state file left off, "
        "else the head",
    )
    p.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        metavar="SERVER",
        help="the hookledger to follow (default http://127.0.0.1:8000)",
    )
    p.add_argument("--token", help="a read token (default: $HOOKLEDGER_TOKEN)")
    p.add_argument(
        "--state",
        default=LISTEN_STATE,
        metavar="FILE",
        help=f"where the last forwarded position is kept (default ./{LISTEN_STATE})",
    )
