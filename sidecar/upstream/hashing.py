"""The 64-bit hashes Envoy's consistent hashing is built on, in pure Python: xxHash64
(Envoy's HashUtil::xxHash64, seed 0 unless given) and the 64-bit MurmurHash2 of
libstdc++'s std::hash (Envoy's MurmurHash::murmurHash2, the ring hash's
MURMUR_HASH_2 option).

Bit-exact with Envoy (tests/upstream/test_hashing.py holds Envoy's own test
vectors), so a key goes to the same host here as in Envoy.  Inputs are short
(host keys, header values, cookies), so the code favours few Python operations
per call over streaming.
"""

from __future__ import annotations

import struct

MASK = 0xFFFFFFFFFFFFFFFF
P1 = 0x9E3779B185EBCA87
P2 = 0xC2B2AE3D27D4EB4F
P3 = 0x165667B19E3779F9
P4 = 0x85EBCA77C2B2AE63
P5 = 0x27D4EB2F165667C5

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_STRIPE = struct.Struct("<4Q")

MURMUR_SEED = 0xC70F6907          # libstdc++'s std::hash seed (Envoy's STD_HASH_SEED)
_MURMUR_MUL = 0xC6A4A7935BD1E995


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * P2) & MASK
    acc = ((acc << 31) | (acc >> 33)) & MASK
    return (acc * P1) & MASK


def xxhash64(data: bytes, seed: int = 0) -> int:
    """XXH64(data, seed), as an unsigned 64-bit int."""
    n = len(data)
    i = 0
    if n >= 32:
        v1 = (seed + P1 + P2) & MASK
        v2 = (seed + P2) & MASK
        v3 = seed
        v4 = (seed - P1) & MASK
        limit = n - 32
        unpack = _STRIPE.unpack_from
        while i <= limit:
            a, b, c, d = unpack(data, i)
            v1 = _round(v1, a)
            v2 = _round(v2, b)
            v3 = _round(v3, c)
            v4 = _round(v4, d)
            i += 32
        h = ((((v1 << 1) | (v1 >> 63)) + ((v2 << 7) | (v2 >> 57)) + ((v3 << 12) | (v3 >> 52))
              + ((v4 << 18) | (v4 >> 46))) & MASK)
        for v in (v1, v2, v3, v4):
            h = ((h ^ _round(0, v)) * P1 + P4) & MASK
    else:
        h = (seed + P5) & MASK
    h = (h + n) & MASK
    while i + 8 <= n:
        h ^= _round(0, _U64.unpack_from(data, i)[0])
        h = ((((h << 27) | (h >> 37)) & MASK) * P1 + P4) & MASK
        i += 8
    if i + 4 <= n:
        h ^= (_U32.unpack_from(data, i)[0] * P1) & MASK
        h = ((((h << 23) | (h >> 41)) & MASK) * P2 + P3) & MASK
        i += 4
    while i < n:
        h ^= (data[i] * P5) & MASK
        h = ((((h << 11) | (h >> 53)) & MASK) * P1) & MASK
        i += 1
    h ^= h >> 33
    h = (h * P2) & MASK
    h ^= h >> 29
    h = (h * P3) & MASK
    return h ^ (h >> 32)


def xxhash64_text(text: str, seed: int = 0) -> int:
    """xxHash64 of a str's UTF-8 bytes (header values, cookies, host keys)."""
    return xxhash64(text.encode(), seed)


def murmur2_64(data: bytes, seed: int = MURMUR_SEED) -> int:
    """libstdc++'s 64-bit MurmurHash2 (_Hash_bytes), as Envoy's MurmurHash::murmurHash2."""
    n = len(data)
    mul = _MURMUR_MUL
    h = (seed ^ (n * mul)) & MASK
    aligned = n & ~7
    for i in range(0, aligned, 8):
        k = (_U64.unpack_from(data, i)[0] * mul) & MASK
        k = ((k ^ (k >> 47)) * mul) & MASK
        h = ((h ^ k) * mul) & MASK
    if n & 7:
        k = int.from_bytes(data[aligned:], "little")
        h = ((h ^ k) * mul) & MASK
    h = ((h ^ (h >> 47)) * mul) & MASK
    return h ^ (h >> 47)
