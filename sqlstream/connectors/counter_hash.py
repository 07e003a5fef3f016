"""Counter-based random numbers for the generators (datagen, nexmark): splitmix64.

A value is a pure function of (seed, field, row number), so batch boundaries, restarts and
partitions never change what is generated — which is what makes the generators replayable
sources with exactly-once recovery.

>>> import numpy as np
>>> a = hash_rows(np.arange(5, dtype=np.int64), field_key(0, "x"))
>>> b = hash_rows(np.arange(2, 5, dtype=np.int64), field_key(0, "x"))
>>> bool((a[2:] == b).all())
True
"""

from __future__ import annotations

import hashlib

import numpy as np

MASK = (1 << 64) - 1
_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_NP_GOLDEN, _NP_M1, _NP_M2 = np.uint64(_GOLDEN), np.uint64(_M1), np.uint64(_M2)


def mix64(x: int) -> int:
    """splitmix64 of one Python int."""
    z = (x + _GOLDEN) & MASK
    z = ((z ^ (z >> 30)) * _M1) & MASK
    z = ((z ^ (z >> 27)) * _M2) & MASK
    return z ^ (z >> 31)


def field_key(seed: int, name: str) -> int:
    """The hash key of one random field (stable across Python runs, unlike ``hash()``)."""
    digest = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
    return mix64(mix64(seed & MASK) ^ digest)


def hash_rows(idx: np.ndarray, key: int) -> np.ndarray:
    """64 random-looking bits per row number: splitmix64 of ``key + idx * golden`` (uint64).

    In-place operations keep it at ~9 ms per million rows.
    """
    z = idx.view(np.uint64) * _NP_GOLDEN
    z += np.uint64(key)
    t = z >> 30
    z ^= t
    z *= _NP_M1
    np.right_shift(z, 27, out=t)
    z ^= t
    z *= _NP_M2
    np.right_shift(z, 31, out=t)
    z ^= t
    return z
