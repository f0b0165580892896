"""Model-size ladders: each ladder is itself the scaling grid of a study.

``paper`` is exactly the Fluid paper's (depth, width, heads); ``cpu`` spans >10x in parameters at
sizes a 2-core CPU trains in minutes. Add a size by adding a line; add a ladder by adding a dict.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.errors import UserError


@dataclass(frozen=True)
class SizeSpec:
    depth: int
    width: int
    heads: int


LADDERS: dict[str, dict[str, SizeSpec]] = {
    "cpu": {
        "xs": SizeSpec(depth=2, width=64, heads=2),
        "s": SizeSpec(depth=3, width=96, heads=3),
        "m": SizeSpec(depth=4, width=128, heads=4),
        "l": SizeSpec(depth=5, width=160, heads=5),
        "xl": SizeSpec(depth=6, width=192, heads=6),
    },
    "paper": {
        "166M": SizeSpec(depth=12, width=768, heads=12),
        "369M": SizeSpec(depth=16, width=1024, heads=16),
        "665M": SizeSpec(depth=20, width=1280, heads=16),
        "1.1B": SizeSpec(depth=24, width=1536, heads=16),
        "3.1B": SizeSpec(depth=32, width=2304, heads=24),
        "10.5B": SizeSpec(depth=34, width=4096, heads=64),
    },
}

# The paper's nominal parameter counts, for checking our counting.
PAPER_PARAMS = {"166M": 166e6, "369M": 369e6, "665M": 665e6, "1.1B": 1.1e9, "3.1B": 3.1e9,
                "10.5B": 10.5e9}


def size_spec(ladder: str, size: str) -> SizeSpec:
    if ladder not in LADDERS:
        raise UserError("model.ladder", f"unknown ladder {ladder!r}", LADDERS)
    if size not in LADDERS[ladder]:
        raise UserError("model.size", f"unknown size {size!r} in ladder {ladder!r}", LADDERS[ladder])
    return LADDERS[ladder][size]
