"""What `serve` hands each of its uvicorn worker processes.

uvicorn starts a worker by importing a factory (`api.app:app_from_handover`), so
the one way in is the environment: `serve` writes a `Handover` as JSON into
HOOKLEDGER_SERVE, and the worker reads it back here. Nothing else in a worker
reads the environment for what `serve` decided.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import orjson

ENV = "HOOKLEDGER_SERVE"


@dataclass(frozen=True, slots=True)
class Handover:
    """The serving decisions every worker of one `serve` shares."""

    config_path: str | None  # absolute; None: the built-in defaults
    database_url: str  # as `serve` resolved it (it may come from HOOKLEDGER_DATABASE_URL)
    run_projectors: bool  # False with --no-projector
    console_key: str  # hex; one console signing key for all workers, new at each start
    head_timeout_s: float  # `[server] body_timeout_seconds`, for the request head too

    def export(self) -> None:
        """Put this in the environment the workers inherit."""
        os.environ[ENV] = orjson.dumps(dataclasses.asdict(self)).decode()


def received() -> Handover | None:
    """The handover of the `serve` that started this process, if one did."""
    raw = os.environ.get(ENV)
    return Handover(**orjson.loads(raw)) if raw else None
