"""Leases: at most one live worker folds a projection at a time.

A lease is a row (name, owner, expiry); a worker renews it every loop and another may
take it only once it expired, so a crashed worker's projection moves on after `ttl_s`.
"""

from __future__ import annotations

from sqlalchemy import Engine, select, update
from sqlalchemy import exc as sa_exc

from ledger.recorder import writer
from projections.schema import projection_leases
from projections.versions import now_us


def acquire_lease(engine: Engine, name: str, owner: str, ttl_s: float) -> bool:
    """Take or renew the lease on a projection; False while another live worker holds it."""
    stamp = now_us()
    expires = stamp + int(ttl_s * 1_000_000)
    with writer(engine.connect()) as conn:
        with conn.begin():
            result = conn.execute(
                update(projection_leases)
                .where(
                    projection_leases.c.name == name,
                    (projection_leases.c.owner == owner)
                    | (projection_leases.c.expires_at_us < stamp),
                )
                .values(owner=owner, expires_at_us=expires)
            )
            if result.rowcount == 1:
                return True
            taken = conn.execute(
                select(projection_leases.c.name).where(projection_leases.c.name == name)
            ).first()
            if taken is not None:
                return False
        try:
            with conn.begin():
                conn.execute(
                    projection_leases.insert().values(name=name, owner=owner, expires_at_us=expires)
                )
        except sa_exc.IntegrityError:
            return False
        return True


def release_lease(engine: Engine, name: str, owner: str) -> None:
    with writer(engine.connect()) as conn, conn.begin():
        conn.execute(
            projection_leases.delete().where(
                projection_leases.c.name == name, projection_leases.c.owner == owner
            )
        )
