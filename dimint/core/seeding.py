"""Seeded randomness for the state machines: one independent stream per component.

Theory of operation: the core never touches global randomness; every machine takes a
``random.Random`` in its constructor (STYLE: randomness is injected). ``derive_rng(seed, *names)``
derives that stream from a run seed and the component's name, so a run is a pure function of its
seed (invariant 6), a failing run is reproduced by printing one number, and adding a component (or
a draw in one) never shifts the numbers another component sees. The seed material is BLAKE2b of a
JSON encoding, never Python's per-process salted ``hash()``, so every process derives the same
streams. The simulator seeds every host this way; a real process may too, to replay a run.
"""

from __future__ import annotations

import hashlib
import json
import random

__all__ = ["derive_rng"]


def derive_rng(seed: int, *names: str | int) -> random.Random:
    """A ``random.Random`` seeded from ``(seed, *names)``, identical in every process.

    Use one stream per component (``derive_rng(seed, "net")``, ``derive_rng(seed, "host", "node:3")``)
    so components never share or shift each other's draws.
    """
    material = json.dumps([int(seed), *names], separators=(",", ":")).encode("utf-8")
    digest = hashlib.blake2b(material, digest_size=16).digest()
    return random.Random(int.from_bytes(digest, "big"))
