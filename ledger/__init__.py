"""hookledger's log: schema, append, read, hash chain, sources, config and CLI."""
