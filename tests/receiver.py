"""A real HTTP receiver for destination tests: a threaded `http.server` that verifies
every delivery with the official `standardwebhooks` library and answers as told.

`Receiver.plan` decides each answer from the delivery (its position and how many
times it came): "ok" (204), "fail" (500), "slow" (sleeps `slow_s`, then 204),
"gone" (410), "close" (closes the connection without an answer), "redirect" (307).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Delivery:
    position: int
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    verified: bool | None  # None: no secret to verify with
    answer: str
    status: int | None  # None: the connection was closed
    at: float = field(default_factory=time.monotonic)


class Receiver:
    """Start with `with Receiver(secret) as r:`; `r.url` is where to send."""

    def __init__(
        self,
        secret: str | None = None,
        plan: Callable[[int, int], str] | None = None,
        slow_s: float = 2.0,
    ) -> None:
        self.secret = secret
        self.plan = plan or (lambda position, seen: "ok")
        self.slow_s = slow_s
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def positions(self, delivered: bool = True) -> list[int]:
        """Positions received, in arrival order (only those answered 2xx, by default)."""
        with self.lock:
            return [
                d.position
                for d in self.deliveries
                if not delivered or (d.status is not None and 200 <= d.status < 300)
            ]

    def seen(self, position: int) -> int:
        with self.lock:
            return sum(1 for d in self.deliveries if d.position == position)

    def wait_for(self, count: int, timeout: float = 20.0, delivered: bool = True) -> bool:
        """Until `count` deliveries (2xx ones, by default) arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.positions(delivered)) >= count:
                return True
            time.sleep(0.02)
        return len(self.positions(delivered)) >= count

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified = None
                if receiver.secret is not None:
                    try:
                        Webhook(receiver.secret).verify(body, headers, json_parse=False)
                        verified = True
                    except WebhookVerificationError:
                        verified = False
                position = int(headers.get("ledger-position", "0"))
                with receiver.lock:
                    seen = sum(1 for d in receiver.deliveries if d.position == position)
                answer = receiver.plan(position, seen)
                if verified is False:
                    answer = "unsigned"
                if answer == "slow":
                    time.sleep(receiver.slow_s)
                status: int | None = {"ok": 204, "slow": 204, "gone": 410, "redirect": 307}.get(
                    answer, 500
                )
                if answer == "close":
                    status = None
                with receiver.lock:
                    receiver.deliveries.append(
                        Delivery(
                            position,
                            headers.get("webhook-id", ""),
                            headers,
                            body,
                            verified,
                            answer,
                            status,
                        )
                    )
                if status is None:
                    self.close_connection = True
                    self.connection.close()
                    return
                text = b"" if status == 204 else f"answer {answer}".encode()
                try:
                    self.send_response(status)
                    if status == 307:
                        self.send_header("location", "http://127.0.0.1:1/elsewhere")
                    self.send_header("content-length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the sender gave up (a timeout)

        return Handler
