"""The destination benchmark's receiver: a bare ASGI app under uvicorn answering 204 at
once, noting when each `Ledger-Position` arrived (GET /stats answers them).

    python -m bench.receiver --port 9000
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

ARRIVALS: dict[str, float] = {}
COUNT = [0]
PEERS: set[tuple[str, int]] = set()  # connections seen: keep-alive keeps this small


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """POST: read the body, note the arrival, 204. GET /stats: the arrivals as JSON."""
    if scope["type"] != "http":
        return
    if scope["method"] == "GET":  # the arrivals only when asked: the count is polled
        doc: dict[str, Any] = {"count": COUNT[0], "connections": len(PEERS)}
        if scope["query_string"] == b"arrivals=1":
            doc["arrivals"] = ARRIVALS
        body = json.dumps(doc).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    COUNT[0] += 1
    PEERS.add(tuple(scope["client"] or ("", 0)))
    for name, value in scope["headers"]:
        if name == b"ledger-position":
            ARRIVALS.setdefault(value.decode(), time.time())
            break
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
