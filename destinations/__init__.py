"""Destinations: consumers of the log with an effect outside it (HTTP endpoints, handlers)."""
