"""Every scheme by its configured name (`verifier = "..."`), listed here once."""

from __future__ import annotations

from ledger.signatures.generic import GENERIC_SCHEMES
from ledger.signatures.providers import PROVIDER_SCHEMES
from ledger.signatures.scheme import Scheme

SCHEMES: dict[str, Scheme] = {s.name: s for s in (*GENERIC_SCHEMES, *PROVIDER_SCHEMES)}
