"""
The hub's constants set for one run from ``HUB_CONSTANTS`` ("module.NAME=value ..."):
how the benchmark and the fault sequencer try a variant (a sweep of one client a turn,
coalescing off) that is not an operator's decision, so not a setting.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping


def apply(environ: Mapping[str, str] = os.environ) -> None:
    """Set each named constant, parsed as its current value's type; a typo fails loudly."""
    for item in environ.get("HUB_CONSTANTS", "").split():
        target, _, text = item.partition("=")
        module_name, _, name = target.rpartition(".")
        module = importlib.import_module(module_name)
        current = getattr(module, name)  # AttributeError: no such constant
        setattr(module, name, type(current)(text))
