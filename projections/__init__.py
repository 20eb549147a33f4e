"""The projector engine (versions, leases, rebuild and swap) and projection definitions."""
