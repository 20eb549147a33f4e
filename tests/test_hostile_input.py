"""Hostile input on the ingest path (issue 8).

(a) Fuzzed requests in-process, on both backends: arbitrary bodies, header names and
    values, query strings and source names. Never a 500, every error is the JSON
    `{"error", "detail"}` shape, every 200/202 is stored byte for byte, nothing refused
    is stored, and the chain verifies afterwards.
(b) A real `hookledger serve` process over raw sockets (httpx would normalize what we
    send): huge header counts and sizes, slow bodies, a Content-Length that lies, a
    chunked body over the limit. Each is refused cleanly and the server keeps serving.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.integrity import verify_ledger
from ledger.recorder import iter_events
from tests.helpers import ERROR_KEYS, assert_error
from tests.pg import free_port

ROOT = Path(__file__).resolve().parent.parent
HMAC_SECRET = "fuzz-hmac-secret"
STRIPE_SECRET = "whsec_fuzz"

FUZZ_CONFIG = """
[server]
max_body_bytes = 4096

[sources.open]
verifier = "none"
event_id = "header:X-Event-Id"

[sources.signed]
verifier = "hmac-sha256"
secret_env = "HL_FUZZ_HMAC"
signature_header = "X-Signature"
event_id = "/id"

[sources.stripe]
verifier = "stripe"
secret_env = "HL_FUZZ_STRIPE"

[sources.unset]
verifier = "hmac-sha256"
secret_env = "HL_FUZZ_UNSET"
signature_header = "X-Signature"
"""
FUZZ_ENV = {"HL_FUZZ_HMAC": HMAC_SECRET, "HL_FUZZ_STRIPE": STRIPE_SECRET}


# --- (a) fuzzing in-process ------------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
# What an HTTP client can put in a header value: visible Latin-1 and spaces, no CR/LF/NUL.
value_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80
)
SQLISH = ["'; DROP TABLE events; --", '" OR 1=1 --', "%'; SELECT pg_sleep(10); --", "\\'"]
header_values = st.one_of(value_text.map(lambda s: s.strip(" ")), st.sampled_from(SQLISH)).map(
    lambda s: s.encode("latin-1")
)
header_names = st.text(TOKEN_CHARS, min_size=1, max_size=24).filter(
    lambda n: n.lower() not in {"host", "content-length", "transfer-encoding"}
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)  # every code point but surrogates
    | st.sampled_from(["evt\x00", "\x00", "a\x00b"])  # NUL: PostgreSQL text cannot hold it
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
json_docs = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "type": json_values,
        "event_type": json_values,
        "data": json_values,
        "event": json_values,
    },
).map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8"))
bodies = st.one_of(
    st.binary(max_size=300),
    json_docs,
    st.binary(min_size=4000, max_size=4200),  # around max_body_bytes
    st.just(b""),
)
ODD_SOURCES = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2E%2Fopen",
    "open%2F..",
    "open%00",
    "%00",
    "%ff%fe",
    "OPEN",
    "open%20",
    "%20open",
    "open;x=1",
    "%C3%BCn%C3%AFcode",
    "ünïcode",
    "a" * 5000,
    "%" * 30,
    "open/",
    *(quote(q, safe="") for q in SQLISH),
]
configured = st.sampled_from(["open", "open", "signed", "stripe", "unset"])
odd = st.one_of(
    st.sampled_from(ODD_SOURCES),
    st.text(min_size=1, max_size=40).map(lambda s: quote(s, safe="")),
)
sources = st.sampled_from([configured] * 3 + [odd]).flatmap(lambda strategy: strategy)


def printable(text: str) -> str:
    """Percent-encode what no HTTP client puts in a URL (ASCII controls); keep the rest raw."""
    return "".join(f"%{ord(c):02X}" if c.isascii() and not c.isprintable() else c for c in text)


queries = st.one_of(
    st.just(""),
    st.text(max_size=60).map(printable),
    st.text("=&%+;?/#abc0123456789", max_size=30),
    st.sampled_from(SQLISH).map(lambda q: "token=" + q),
)


@st.composite
def requests(draw):
    source = draw(sources)
    body = draw(bodies)
    headers: list[tuple[bytes, bytes]] = [
        (name.encode(), value)
        for name, value in draw(st.lists(st.tuples(header_names, header_values), max_size=8))
    ]
    if draw(st.booleans()):
        headers.append((b"X-Event-Id", draw(header_values)))
    if draw(st.booleans()):
        headers.append((b"Content-Type", draw(header_values)))
    mode = draw(st.sampled_from(["signed", "fuzzed", "absent"]))
    now = int(time.time())
    if mode == "signed":
        mac = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers.append((b"X-Signature", mac.encode()))
        t = str(now).encode()
        smac = hmac.new(STRIPE_SECRET.encode(), t + b"." + body, hashlib.sha256).hexdigest()
        headers.append((b"Stripe-Signature", b"t=" + t + b",v1=" + smac.encode()))
    elif mode == "fuzzed":
        headers.append((b"X-Signature", draw(header_values)))
        t = draw(st.one_of(st.integers(-(2**70), 2**70).map(str), value_text))
        v1 = draw(st.one_of(st.text("0123456789abcdef", max_size=70), value_text))
        headers.append((b"Stripe-Signature", f"t={t},v1={v1},v0=x".encode("latin-1", "replace")))
    return source, draw(queries), headers, body


@pytest.fixture(scope="module")
def fuzz_settings():
    return settings(
        max_examples=int(os.environ.get("HOOKLEDGER_FUZZ_EXAMPLES", "300")),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def test_fuzzed_requests_never_500_and_never_corrupt_the_log(make_client, fuzz_settings):
    client = make_client(FUZZ_CONFIG, env=FUZZ_ENV)
    engine = client.app.state.hl.engine
    stored: dict[int, tuple[str, bytes, bytes | None]] = {}
    statuses: dict[int, int] = {}

    @fuzz_settings
    @given(requests())
    def deliver(request) -> None:
        source, query, headers, body = request
        url = f"/hooks/{source}" + (f"?{query}" if query else "")
        r = client.post(url, content=body, headers=headers, follow_redirects=False)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code != 500 and r.status_code < 600, r.text
        if r.status_code in (200, 202):
            position = r.json()["position"]
            assert r.headers["ledger-position"] == str(position)
            assert position not in stored
            event_id = dict(headers).get(b"X-Event-Id")
            stored[position] = (source, body, event_id)
        elif 300 <= r.status_code < 400:
            assert r.status_code in (307, 308)  # Starlette's trailing-slash redirect
        else:
            doc = assert_error(r)
            if r.status_code == 503:
                assert doc["error"] == "source_not_configured", doc

    deliver()
    rows = {row.position: row for row in iter_events(engine)}
    assert sorted(rows) == list(range(1, len(rows) + 1))
    assert set(rows) == set(stored), "a refused delivery was stored, or an accepted one lost"
    for position, (source, body, event_id) in stored.items():
        assert rows[position].source == source
        assert rows[position].body == body
        if source == "open" and event_id is not None:  # its id is the received X-Event-Id
            received = dict(orjson.loads(rows[position].headers))
            assert rows[position].event_id == received["x-event-id"]
        assert rows[position].body_sha256 == hashlib.sha256(body).hexdigest()
    result = verify_ledger(engine)
    assert result.ok, result
    assert result.checked == len(stored)
    print("fuzz statuses", sorted(statuses.items()))
    assert 202 in statuses and 401 in statuses and 404 in statuses, statuses


def test_a_nul_in_a_body_derived_id_or_type_is_stored_without_failing_its_batch(make_client):
    """PostgreSQL text cannot hold NUL, which a signed JSON body can put in the event id
    and type: the delivery is stored (id and type absent, body verbatim) with no 500, and
    the deliveries sharing its group-commit batch are unaffected."""
    client = make_client(FUZZ_CONFIG, env=FUZZ_ENV)
    engine = client.app.state.hl.engine
    body = b'{"id":"evt\\u0000x","type":"a\\u0000b"}'
    mac = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
    results: list[object] = []
    lock = threading.Lock()

    def post(path: str, content: bytes, headers: dict[str, str]) -> None:
        try:
            outcome: object = client.post(path, content=content, headers=headers)
        except Exception as e:  # a 500 raises here (TestClient re-raises server errors)
            outcome = e
        with lock:
            results.append(outcome)

    jobs = [("/hooks/signed", body, {"X-Signature": mac})]
    jobs += [("/hooks/open", b'{"i":%d}' % i, {"X-Event-Id": str(i)}) for i in range(8)]
    threads = [threading.Thread(target=post, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [getattr(r, "status_code", r) for r in results] == [202] * 9, results
    rows = list(iter_events(engine))
    assert len(rows) == 9
    (hostile,) = [r for r in rows if r.source == "signed"]
    assert (hostile.body, hostile.event_id, hostile.event_type) == (body, None, None)
    assert verify_ledger(engine).ok


def test_one_unstorable_item_does_not_fail_its_group_commit_batch(pg_url):
    """At the appender itself (PostgreSQL): a batch holding one row the database refuses
    is written item by item, so only that item fails and the others are acknowledged."""
    import asyncio

    from ledger import migrate
    from ledger.appender import Appender
    from ledger.recorder import make_engine
    from tests.helpers import new_event

    engine = make_engine(pg_url)
    migrate.upgrade(engine)
    appender = Appender(engine)
    good = [new_event(b'{"n":%d}' % i, event_id=f"ok-{i}") for i in range(6)]
    poison = new_event(b"{}", event_id="bad\x00id")

    async def submit_together() -> list:
        tasks = [asyncio.ensure_future(appender.append(e)) for e in [*good[:3], poison, *good[3:]]]
        await asyncio.sleep(0.05)  # every append is queued before the writer starts
        appender.start()
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        outcomes = asyncio.run(submit_together())
    finally:
        appender.stop()
    assert isinstance(outcomes[3], Exception), outcomes
    acknowledged = [o for i, o in enumerate(outcomes) if i != 3]
    assert [a.position for a in acknowledged] == [1, 2, 3, 4, 5, 6], outcomes
    assert [r.body for r in iter_events(engine)] == [e.body for e in good]
    assert verify_ledger(engine).ok
    engine.dispose()


# --- (b) a real server over raw sockets ------------------------------------------------------

SERVER_CONFIG = """
database_url = "sqlite:///{db}"

[server]
max_body_bytes = 65536
body_timeout_seconds = {timeout}

[sources.app]
verifier = "none"
event_id = "header:X-Event-Id"
"""
READ_TIMEOUT_S = 1.0  # body_timeout_seconds of the server under test (default 30 s)
SWEEP_S = 0.25  # the deadline is enforced within this of its time (api.deadlines)


class Server:
    """`hookledger serve` in a real uvicorn process, with a short body read timeout."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = directory / "ledger.db"
        config = directory / "hookledger.toml"
        config.write_text(SERVER_CONFIG.format(db=self.db, timeout=READ_TIMEOUT_S))
        self.log = directory / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKLEDGER_")}
        env["PYTHONPATH"] = str(ROOT)
        cmd = [sys.executable, "-m", "api.cli", "serve", "--config", str(config)]
        cmd += ["--port", str(self.port), "--no-projector"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=str(directory),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"server not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("hostile"))
    yield s
    alive = s.proc.poll() is None
    s.stop()
    assert alive, "the server died"
    log = s.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def connect(server: Server, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def send_all(sock: socket.socket, data: bytes) -> None:
    """Send, tolerating a server that answered and closed before reading everything."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def read_response(sock: socket.socket, data: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (`data`: bytes already received)."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed without an answer (got {data[:200]!r})"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed mid-answer"
        rest += chunk
    return status, headers, rest[:length]


def closed_by_server(sock: socket.socket, timeout: float = 5) -> bool:
    """True when the server closes the connection within `timeout` (EOF or reset)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def json_error(status: int, headers: dict[str, str], body: bytes) -> dict:
    assert headers.get("content-type", "").startswith("application/json"), (status, headers)
    doc = json.loads(body)
    assert set(doc) == ERROR_KEYS, doc
    return doc


def ledger_count(server: Server) -> int:
    return httpx.get(server.url + "/v1/ledger", timeout=10).json()["count"]


def assert_still_serving(server: Server, count_before: int) -> None:
    """A normal delivery is accepted and stored, nothing refused was, and the chain verifies."""
    body = b'{"normal":true,"t":%d}' % time.monotonic_ns()
    r = httpx.post(
        server.url + "/hooks/app", content=body, headers={"X-Event-Id": str(time.time_ns())}
    )
    assert r.status_code == 202, r.text
    position = r.json()["position"]
    assert httpx.get(f"{server.url}/v1/events/{position}/raw").content == body
    assert ledger_count(server) == count_before + 1
    verified = httpx.post(server.url + "/v1/ledger/verify", timeout=30).json()
    assert verified["ok"] is True, verified
    assert server.proc.poll() is None


REQUEST_HEAD = b"POST /hooks/app HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def test_ten_thousand_headers_are_refused(server):
    before = ledger_count(server)
    many = b"".join(b"X-Hostile-%d: v%d\r\n" % (i, i) for i in range(10_000))
    with connect(server) as sock:
        send_all(sock, REQUEST_HEAD + many + b"Content-Length: 7\r\n\r\nhostile")
        status, headers, body = read_response(sock)
        assert status == 431
        assert json_error(status, headers, body)["error"] == "headers_too_large"
        assert headers.get("connection") == "close"
        assert closed_by_server(sock)
    assert_still_serving(server, before)


def test_a_one_mebibyte_header_is_refused(server):
    before = ledger_count(server)
    huge = b"X-Huge: " + b"h" * (1 << 20) + b"\r\n"
    with connect(server) as sock:
        send_all(sock, REQUEST_HEAD + huge + b"Content-Length: 7\r\n\r\nhostile")
        status, headers, body = read_response(sock)
        assert status == 431
        assert json_error(status, headers, body)["error"] == "headers_too_large"
        assert closed_by_server(sock)
    assert_still_serving(server, before)


def test_ordinary_header_sets_are_accepted_and_stored_verbatim(server):
    before = ledger_count(server)
    headers = [(f"X-Proxy-{i}", f"hop {i} é") for i in range(60)]
    request = REQUEST_HEAD + b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in headers)
    with connect(server) as sock:
        send_all(sock, request + b"Content-Length: 2\r\n\r\nok")
        status, _, body = read_response(sock)
    assert status == 202, body
    position = json.loads(body)["position"]
    stored = httpx.get(f"{server.url}/v1/events/{position}").json()["headers"]
    assert [tuple(p) for p in stored if p[0].startswith("x-proxy-")] == [
        (n.lower(), v) for n, v in headers
    ]
    assert_still_serving(server, before + 1)


def test_slow_bodies_are_cut_off_and_do_not_block_others(server):
    """Slow-loris: headers, then the body one byte at a time. Others are served meanwhile;
    the slow ones get 408 after the read timeout and their connections are closed."""
    before = ledger_count(server)
    outcomes: list[tuple[int, dict, bytes, float, bool]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def loris() -> None:
        with connect(server) as sock:
            started = time.monotonic()
            send_all(sock, REQUEST_HEAD + b"Content-Length: 1000\r\n\r\n")
            sock.setblocking(False)
            received = b""
            for _ in range(200):  # at most 200 bytes, one every 50 ms
                if stop.is_set():
                    break
                try:
                    sock.send(b"x")
                except (BrokenPipeError, ConnectionResetError):
                    break
                with contextlib.suppress(BlockingIOError):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                    if b"\r\n\r\n" in received:
                        break
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            sock.setblocking(True)
            sock.settimeout(5)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
                    received += chunk
            assert b"\r\n\r\n" in received, f"no answer to a slow body: {received!r}"
            status, headers, body = read_response(sock, received)
            closed = closed_by_server(sock)
            with lock:
                outcomes.append((status, headers, body, elapsed, closed))

    def header_loris(sock: socket.socket) -> None:
        # Trickles its header block: it must not block anybody (the server cuts it
        # at the head deadline, see test_a_request_head_that_never_completes_is_cut).
        for byte in b"X-Slow: " + b"s" * 100:
            if stop.is_set():
                return
            with contextlib.suppress(OSError):
                sock.send(bytes([byte]))
            time.sleep(0.05)

    slow_header = connect(server)
    slow_header.sendall(REQUEST_HEAD)
    threads = [threading.Thread(target=loris) for _ in range(4)]
    threads.append(threading.Thread(target=header_loris, args=(slow_header,)))
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        latencies = []
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for i in range(10):
                started = time.monotonic()
                r = client.post("/hooks/app", content=b'{"fast":%d}' % i)
                latencies.append(time.monotonic() - started)
                assert r.status_code == 202, r.text
        assert max(latencies) < 1.0, latencies
        for t in threads[:4]:
            t.join(READ_TIMEOUT_S + 15)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        slow_header.close()
    assert len(outcomes) == 4
    for status, headers, body, elapsed, closed in outcomes:
        assert status == 408
        assert json_error(status, headers, body)["error"] == "body_timeout"
        assert READ_TIMEOUT_S - 0.5 <= elapsed <= READ_TIMEOUT_S + 5, elapsed
        assert closed, "the server kept a timed-out connection open"
    assert_still_serving(server, before + 10)


def await_answer(sock: socket.socket, limit: float) -> tuple[int, dict, bytes, float]:
    """The answer to a request already sent, and the seconds it took to come."""
    started = time.monotonic()
    sock.settimeout(limit)
    status, headers, body = read_response(sock)
    return status, headers, body, time.monotonic() - started


def test_a_body_that_never_starts_is_408_after_the_timeout(server):
    """Headers, then nothing: the deadline counts from the end of the headers."""
    before = ledger_count(server)
    with connect(server) as sock:
        send_all(sock, REQUEST_HEAD + b"Content-Length: 100\r\n\r\n")
        status, headers, body, elapsed = await_answer(sock, READ_TIMEOUT_S + 10)
        assert status == 408
        assert json_error(status, headers, body)["error"] == "body_timeout"
        assert READ_TIMEOUT_S - 0.05 <= elapsed <= READ_TIMEOUT_S + SWEEP_S + 1.0, elapsed
        assert closed_by_server(sock)
    with connect(server) as sock:  # chunked, not one chunk sent
        send_all(sock, REQUEST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        status, headers, body, elapsed = await_answer(sock, READ_TIMEOUT_S + 10)
        assert (status, json_error(status, headers, body)["error"]) == (408, "body_timeout")
        assert elapsed <= READ_TIMEOUT_S + SWEEP_S + 1.0, elapsed
    assert_still_serving(server, before)


def test_a_body_trickling_a_byte_a_second_is_cut_at_the_deadline(server):
    """Each byte arriving does not extend the deadline: the whole body is due in time."""
    before = ledger_count(server)
    with connect(server) as sock:
        started = time.monotonic()
        send_all(sock, REQUEST_HEAD + b"Content-Length: 20\r\n\r\n")
        sock.settimeout(0.01)
        answer = b""
        while b"\r\n\r\n" not in answer and time.monotonic() - started < READ_TIMEOUT_S + 10:
            send_all(sock, b"x")
            with contextlib.suppress(TimeoutError):
                while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
                    answer += chunk
            time.sleep(min(0.3, READ_TIMEOUT_S / 4))  # four bytes per timeout: it never ends
        elapsed = time.monotonic() - started
        sock.settimeout(5)
        status, headers, body = read_response(sock, answer)
        assert (status, json_error(status, headers, body)["error"]) == (408, "body_timeout")
        assert elapsed <= READ_TIMEOUT_S + SWEEP_S + 1.0, elapsed
    assert_still_serving(server, before)


def test_many_stalled_bodies_do_not_stop_a_normal_delivery(server):
    """300 connections that send headers and no body: a normal delivery meanwhile is
    accepted at once, each stalled one is answered 408 and closed, nothing is stored."""
    before = ledger_count(server)
    stalled = []
    try:
        for _ in range(300):
            sock = connect(server)
            send_all(sock, REQUEST_HEAD + b"Content-Length: 10\r\n\r\n")
            stalled.append(sock)
        started = time.monotonic()
        r = httpx.post(server.url + "/hooks/app", content=b'{"amid":"stalled"}', timeout=10)
        assert r.status_code == 202, r.text
        assert time.monotonic() - started < READ_TIMEOUT_S, "the delivery waited for the stalled"
        answers = [await_answer(sock, READ_TIMEOUT_S + 15) for sock in stalled]
        assert {(a[0], json_error(*a[:3])["error"]) for a in answers} == {(408, "body_timeout")}
        assert all(closed_by_server(sock) for sock in stalled)
    finally:
        for sock in stalled:
            sock.close()
    assert_still_serving(server, before + 1)


def test_a_request_head_that_never_completes_is_cut(server):
    """uvicorn alone keeps these forever: a connection that sends nothing, and a head
    that trickles in. Both get 408 and are closed at the deadline (the same timeout)."""
    before = ledger_count(server)
    idle = connect(server)
    partial = connect(server)
    send_all(partial, REQUEST_HEAD)  # the request line and one header, never the blank line
    trickle = connect(server)
    try:
        started = time.monotonic()
        send_all(trickle, REQUEST_HEAD)
        trickle.settimeout(0.01)
        answer = b""
        for byte in b"X-Slow: " + b"s" * 100:  # a byte every 50 ms: 5 s of header
            with contextlib.suppress(OSError):
                trickle.send(bytes([byte]))
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                answer += trickle.recv(65536)
            if b"\r\n\r\n" in answer:
                break
            time.sleep(0.05)
        trickled = time.monotonic() - started
        assert trickled <= READ_TIMEOUT_S + SWEEP_S + 1.0, trickled
        trickle.settimeout(5)
        status, headers, body = read_response(trickle, answer)
        assert (status, json_error(status, headers, body)["error"]) == (408, "header_timeout")
        for sock in (idle, partial):
            status, headers, body, _ = await_answer(sock, 5)
            assert (status, json_error(status, headers, body)["error"]) == (408, "header_timeout")
            assert closed_by_server(sock)
        assert time.monotonic() - started <= READ_TIMEOUT_S + SWEEP_S + 1.5
    finally:
        for sock in (idle, partial, trickle):
            sock.close()
    assert_still_serving(server, before)


def incomplete_bodies(server: Server) -> float:
    """The server's count of deliveries whose client hung up mid-body (from /metrics)."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    found = re.search(
        r'hookledger_deliveries_total\{[^}]*outcome="incomplete_body"[^}]*\} (\S+)', text
    )
    return float(found.group(1)) if found else 0.0


def test_a_content_length_that_lies_then_a_hang_up(server):
    """Fewer bytes than announced, then the client closes: nothing stored, no traceback."""
    before = ledger_count(server)
    seen = incomplete_bodies(server)
    with connect(server) as sock:
        send_all(sock, REQUEST_HEAD + b"Content-Length: 5000\r\n\r\n" + b"l" * 100)
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while incomplete_bodies(server) == seen:
        assert time.monotonic() < deadline, "the server never noticed the hang-up"
        time.sleep(0.05)
    log = server.log.read_text("latin-1")
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert_still_serving(server, before)


def test_a_content_length_that_lies_and_a_half_close(server):
    before = ledger_count(server)
    with connect(server) as sock:
        send_all(sock, REQUEST_HEAD + b"Content-Length: 5000\r\n\r\n" + b"l" * 100)
        sock.shutdown(socket.SHUT_WR)
        assert closed_by_server(sock, timeout=10)
    assert_still_serving(server, before)


def chunked(data: bytes, size: int) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size])
        for i in range(0, len(data), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def test_a_chunked_body_over_the_limit_is_413_with_nothing_stored(server):
    before = ledger_count(server)
    with connect(server) as sock:
        send_all(sock, REQUEST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        sock.setblocking(False)
        sent = 0
        answered = b""
        for _ in range(64):  # at most 256 KiB, four times the limit
            chunk = b"%x\r\n%s\r\n" % (4096, b"c" * 4096)
            try:
                sock.sendall(chunk)
                sent += 4096
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            with contextlib.suppress(BlockingIOError):
                answered += sock.recv(65536)
                if b"\r\n\r\n" in answered:
                    break
            time.sleep(0.005)
        sock.setblocking(True)
        sock.settimeout(10)
        status, headers, body = read_response(sock, answered)
        assert status == 413
        assert json_error(status, headers, body)["error"] == "payload_too_large"
        assert sent > 65536 - 4096 * 2, sent  # it read the body up to the limit, no further
        assert closed_by_server(sock)
    assert_still_serving(server, before)


def test_a_chunked_body_under_the_limit_is_stored_byte_for_byte(server):
    before = ledger_count(server)
    data = bytes(range(256)) * 100  # 25,600 bytes, every byte value
    with connect(server) as sock:
        send_all(sock, REQUEST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(data, 999))
        status, _, body = read_response(sock)
    assert status == 202, body
    position = json.loads(body)["position"]
    assert httpx.get(f"{server.url}/v1/events/{position}/raw").content == data
    assert_still_serving(server, before + 1)


def test_garbage_on_the_wire_does_not_take_the_server_down(server):
    before = ledger_count(server)
    for garbage in (
        b"\x00\x01\x02 GARBAGE\r\n\r\n",
        b"POST /hooks/app HTTP/9.9\r\n\r\n",
        b"POST /hooks/app HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /hooks/app HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST /hooks/app HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n",
        b"POST /hooks/\xff\xfe HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"POST /hooks/app?q=" + b"q" * 70_000 + b" HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    ):
        with connect(server) as sock:
            send_all(sock, garbage)
            sock.settimeout(5)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                answer = sock.recv(65536)
                if answer:
                    status = int(answer.split(b" ", 2)[1])
                    assert 400 <= status < 500 and status != 500, answer[:300]
    assert_still_serving(server, before)


def test_serve_raises_a_low_soft_file_limit():
    """Each connection takes a descriptor: `serve` lifts a soft limit of 256 towards the
    hard one (at most 65,536) before it starts uvicorn."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    expected = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    code = (
        "import resource\n"
        "from api.serve_command import raise_file_limit\n"
        "raise_file_limit()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )
    assert int(result.stdout) == max(256, expected)


def test_an_upload_refused_midway_still_reads_its_413(server):
    """The server answers 413 as soon as a body passes max_body_bytes, while the client is
    still sending: the connection closes gently (FIN, the rest read and dropped), so
    the client reads the answer instead of a reset."""
    before = ledger_count(server)
    with connect(server) as sock:
        send_all(sock, REQUEST_HEAD + b"Content-Length: 4000000\r\n\r\n")
        chunk = b"x" * 65536
        sock.settimeout(0.05)
        answer = b""
        for _ in range(60):  # about 4 MB, well past the 64 KiB limit
            send_all(sock, chunk)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                answer += sock.recv(65536)
        sock.settimeout(5)
        status, headers, body = read_response(sock, answer)
        assert (status, json_error(status, headers, body)["error"]) == (413, "payload_too_large")
        assert closed_by_server(sock)
    assert_still_serving(server, before)
