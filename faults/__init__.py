"""The fault sequencer (see docs/reliability.md): ``python -m faults.run``."""
