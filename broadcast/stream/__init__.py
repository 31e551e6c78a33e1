"""Per process: the relay that owns the stream position, the hub of clients, counts."""
