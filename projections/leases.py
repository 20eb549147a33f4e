"""Leases: at most one live worker folds a projection (or hands over to a destination)
at a time.

A lease is a row (name, owner, expiry) of a lease table (`projection_leases`, or
`destination_leases`); a worker renews it every loop and another may take it only once
it expired, so a crashed worker's work moves on after `ttl_s`.
"""

from __future__ import annotations

from sqlalchemy import Engine, Table, select, update
from sqlalchemy import exc as sa_exc

from ledger.recorder import writer
from projections.schema import projection_leases
from projections.versions import now_us


def acquire_lease(
    engine: Engine, name: str, owner: str, ttl_s: float, table: Table = projection_leases
) -> bool:
    """Take or renew the lease on `name`; False while another live worker holds it."""
    leases = table
    stamp = now_us()
    expires = stamp + int(ttl_s * 1_000_000)
    with writer(engine.connect()) as conn:
        with conn.begin():
            result = conn.execute(
                update(leases)
                .where(
                    leases.c.name == name,
                    (leases.c.owner == owner) | (leases.c.expires_at_us < stamp),
                )
                .values(owner=owner, expires_at_us=expires)
            )
            if result.rowcount == 1:
                return True
            taken = conn.execute(select(leases.c.name).where(leases.c.name == name)).first()
            if taken is not None:
                return False
        try:
            with conn.begin():
                conn.execute(leases.insert().values(name=name, owner=owner, expires_at_us=expires))
        except sa_exc.IntegrityError:
            return False
        return True


def release_lease(engine: Engine, name: str, owner: str, table: Table = projection_leases) -> None:
    leases = table
    with writer(engine.connect()) as conn, conn.begin():
        conn.execute(leases.delete().where(leases.c.name == name, leases.c.owner == owner))
