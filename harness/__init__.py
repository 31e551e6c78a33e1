"""
What the tests, the benchmark and the fault sequencer share: real servers, real Redis
and PostgreSQL, real clients, and the faults put between them. It imports none of them.
"""
