"""The ceiling: a bare Starlette route that reads the body, stores nothing and answers 202.

It runs under uvicorn with the settings `hookledger serve` uses (one worker,
no access log, uvicorn's default loop and HTTP parser: uvloop and httptools
when installed), so the gap to hookledger is the cost of verifying and
durably storing a delivery, not of the framework.

    python -m bench.ceiling --port 8001
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ACCEPTED = b'{"accepted":true}'
READY = b'{"status":"ready"}'


async def receive(request: Request) -> Response:
    """Read the whole body and acknowledge it without looking at it."""
    await request.body()
    return Response(ACCEPTED, 202, media_type="application/json")


async def readyz(request: Request) -> Response:
    """Always ready: there is nothing to prepare."""
    return Response(READY, 200, media_type="application/json")


def create_app() -> Starlette:
    """The ceiling app, routed like hookledger (`POST /hooks/{source}`)."""
    return Starlette(
        routes=[
            Route("/hooks/{source}", receive, methods=["POST"]),
            Route("/readyz", readyz, methods=["GET"]),
        ]
    )


def serve(factory: str, host: str, port: int) -> None:
    """Run an app factory with `hookledger serve`'s uvicorn settings (see ledger/cli.py)."""
    import uvicorn

    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=1,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=10,
    )


def parse_args(argv: Sequence[str] | None, description: str | None) -> argparse.Namespace:
    """`--host` and `--port`, as `hookledger serve` takes them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the ceiling app."""
    args = parse_args(argv, __doc__)
    serve("bench.ceiling:create_app", args.host, args.port)


if __name__ == "__main__":
    main()
