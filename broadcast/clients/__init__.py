"""Per connection: the consumer, its outbox, resume, and the access rules."""
