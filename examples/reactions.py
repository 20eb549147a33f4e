"""An example destination handler: `[destinations.activity]` in hookledger.toml.

A handler is called once per matching event, at least once and in order, and never
again by a rebuild. Make it idempotent: after a crash the last event may come twice.
The event's `position` is unique and stable, so it is the key to deduplicate on.
"""

from __future__ import annotations

import logging

log = logging.getLogger("reactions")


def on_event(event) -> None:
    """Log one line per event; a real handler sends a mail, calls a service, ..."""
    doc = event.json()
    entity = doc.get("entity") if isinstance(doc, dict) else None
    log.info("#%d %s %s %s", event.position, event.event_type, entity, event.event_id)
