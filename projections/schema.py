"""The engine's bookkeeping tables: the projection registry, and the destinations'
checkpoints, leases, attempts and dead letters (`destinations`, the other consumers of
the log). The projections' own tables are built per version."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, Table, Text, text

from ledger.recorder.schema import NAMING, OWN_METADATA, RowId

metadata = MetaData(naming_convention=NAMING)
OWN_METADATA.append(metadata)

# One row per built or building version of each projection.
#   status: building -> live -> retired (or abandoned, when a newer build replaced it)
#   state:  running | failed (halted on a handler error until `projections retry`)
#   row_count: the version's rows, tombstones excluded, moved in each batch's transaction
#   definition: a declarative version's own definition (JSON), applied until it is retired
#   dropped_at_us: when a retired or abandoned version's table was gone (dropped in steps)
projection_versions = Table(
    "projection_versions",
    metadata,
    Column("name", Text, primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("kind", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("table_name", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("reason", Text),
    Column("created_at_us", BigInteger, nullable=False),
    Column("build_total", BigInteger),
    Column("build_started_at_us", BigInteger),
    Column("swapped_at_us", BigInteger),
    Column("diff", Text),
    Column("last_error", Text),
    Column("row_count", BigInteger, nullable=False, server_default=text("0")),
    Column("definition", Text),
    Column("dropped_at_us", BigInteger),
)

# Who works a projection: one holder at a time, taken over when `expires_at_us` passes.
projection_leases = Table(
    "projection_leases",
    metadata,
    Column("name", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
)

projection_errors = Table(
    "projection_errors",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("error", Text, nullable=False),
    Column("traceback", Text),
    Column("at_us", BigInteger, nullable=False),
    Index(None, "name", "version", "position"),
)


# One row per destination ever seen.
#   position: every event up to it is delivered, dead, or not wanted (the checkpoint)
#   state: live | paused | failed; `reason` says why it is not live
#   generation: moved by every change of holder and every operator action that moves
#     the checkpoint or the window (replay, retry, skip), so the holder's compare-and-set
#     refuses what an older holder or an older plan writes
#   notices: moved by pause, resume and redeliver, which the holder takes in as it goes
#   round_generation: the generation the last replay started; attempts made by a plan
#     of this generation or a later one belong to this round, and a delivered one above
#     the checkpoint is handed over (no window row needed). A plan older than the replay
#     that still finishes an attempt writes it with its own, older generation.
#   failed_position: the dead event a halted (`failed`) destination stopped at
#   delivered, failed, dead: attempts by outcome and dead letters, kept as they happen
destinations = Table(
    "destinations",
    metadata,
    Column("name", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("state", Text, nullable=False),
    Column("reason", Text),
    Column("generation", BigInteger, nullable=False, server_default=text("0")),
    Column("notices", BigInteger, nullable=False, server_default=text("0")),
    Column("round_generation", BigInteger, nullable=False, server_default=text("0")),
    Column("failed_position", BigInteger),
    Column("created_at_us", BigInteger, nullable=False),
    Column("delivered", BigInteger, nullable=False, server_default=text("0")),
    Column("failed", BigInteger, nullable=False, server_default=text("0")),
    Column("dead", BigInteger, nullable=False, server_default=text("0")),
)

destination_leases = Table(
    "destination_leases",
    metadata,
    Column("name", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
)

# Events above a destination's checkpoint that are not simply waiting:
#   state done: skipped as dead ahead of an earlier event of another key
#   state retrying: failed `attempts` times this round, next tried at `next_at_us`
#   state redeliver: asked again by an operator (at or below the checkpoint too)
destination_window = Table(
    "destination_window",
    metadata,
    Column("name", Text, primary_key=True),
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_at_us", BigInteger),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("destination", Text, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("generation", BigInteger, nullable=False),  # of the plan that made it
    Column("started_at_us", BigInteger, nullable=False),
    Column("outcome", Text, nullable=False),  # delivered | failed | gone | dead
    Column("status", Integer),
    Column("error", Text),
    Column("duration_us", BigInteger, nullable=False),
    Column("response", Text),
    Index(None, "destination", "id"),
    Index(None, "destination", "position", "id"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("destination", Text, primary_key=True),
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("at_us", BigInteger, nullable=False),
    Column("attempt_id", BigInteger),
)
