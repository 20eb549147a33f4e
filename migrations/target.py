"""What the migrations own: the target of `alembic check` and `revision --autogenerate`.

All of hookledger's own metadata (the ledger's tables and the projection registry's),
so a comparison covers every table the migrations create. The projections' own
tables (`p_NAME_vN`, and their transaction-scoped `stage_p_...` copies) and views
are built by the engine at run time, not by migrations: `include_name` leaves them
out, so they are never proposed for dropping.
"""

from __future__ import annotations

import re

from alembic.environment import NameFilterParentNames, NameFilterType
from sqlalchemy import MetaData

from ledger.recorder.schema import metadata as ledger_metadata
from projections.schema import metadata as projection_metadata

TARGET: list[MetaData] = [ledger_metadata, projection_metadata]

# A projection version's table (projections.versions.table_name) and its staging copy.
ENGINE_TABLE = re.compile(r"^(stage_)?p_[a-z][a-z0-9_]*_v[0-9]+$")


def include_name(
    name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames
) -> bool:
    """False for the engine's projection tables; views are never reflected as tables."""
    if type_ == "table":
        return not ENGINE_TABLE.match(name or "")
    return True
