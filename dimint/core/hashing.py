"""Key hashing and hash ranges shared by placement, the store and migration.

Theory of operation: every key is mapped to a 64-bit unsigned integer by xxHash3 (``xxh3_64``) of
its UTF-8 bytes. The function is defined by the xxHash specification, so the same key lands on the
same shard in every process, on every machine and across Python versions; Python's own ``hash()``
is salted per process and must never be used for placement.

Keys are normalised to ``bytes`` once, at the edge (``as_key``): ``"a"`` and ``b"a"`` are the same key.

A ``HashRange`` is a half-open interval ``[start, end)`` of the hash space ``[0, 2**64)``. Ranges never
wrap around; a wrapping arc of a ring is represented as two ranges.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import xxhash

HASH_BITS = 64
HASH_SPACE = 1 << HASH_BITS
MAX_HASH = HASH_SPACE - 1

_xxh3 = xxhash.xxh3_64_intdigest

Key = str | bytes


def as_key(key: Key) -> bytes:
    """Normalise a key to bytes: strings are UTF-8 encoded, anything else is a caller's bug."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    raise TypeError(f"key must be str or bytes, not {type(key).__name__}")


def key_hash(key: Key) -> int:
    """The 64-bit placement hash of a key (xxh3_64 of its UTF-8 bytes)."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    return _xxh3(key)


def key_hashes(keys: Iterable[Key]) -> np.ndarray:
    """Hashes of many keys as a ``uint64`` array, for vectorised batch lookups."""
    if isinstance(keys, (list, tuple)):
        # A store's keys are all bytes: mapping the C hash over them is three times faster than the
        # per-key generator (a migration source hashes its whole store to select the moving keys).
        try:
            return np.fromiter(map(_xxh3, keys), dtype=np.uint64, count=len(keys))
        except TypeError:
            pass  # a str among them (or something that is not a key): the general path says which
    h = _xxh3
    return np.fromiter((h(k.encode("utf-8") if isinstance(k, str) else k) for k in keys), dtype=np.uint64)


def label_hash(label: str) -> int:
    """Hash of an internal label (a virtual-node name, a shard seed). Same function as keys."""
    return _xxh3(label.encode("utf-8"))


@dataclass(frozen=True, slots=True, order=True)
class HashRange:
    """Half-open interval ``[start, end)`` of key hashes; ``end`` may be ``2**64``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not (0 <= self.start < self.end <= HASH_SPACE):
            raise ValueError(f"invalid hash range [{self.start}, {self.end})")

    def __contains__(self, h: object) -> bool:
        return isinstance(h, int) and self.start <= h < self.end

    @property
    def size(self) -> int:
        return self.end - self.start

    def to_wire(self) -> list[int]:
        return [self.start, self.end]


FULL_RANGE = HashRange(0, HASH_SPACE)
