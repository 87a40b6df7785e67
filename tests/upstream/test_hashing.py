"""xxHash64 and MurmurHash2 against Envoy's own test vectors (test/common/common/hash_test.cc)
and the reference xxHash ones."""

from __future__ import annotations

import pytest

from sidecar.upstream.hashing import murmur2_64, xxhash64


@pytest.mark.parametrize("data, expected", [
    # Envoy's HashUtil::xxHash64 tests
    (b"foo", 3728699739546630719),
    (b"bar", 5234164152756840025),
    (b"foo\nbar", 8917841378505826757),
    (b"lyft", 4400747396090729504),
    (b"", 17241709254077376921),
    # reference xxHash64 values (seed 0)
    (b"abc", 0x44BC2CF5AD770999),
    (b"Nobody inspects the spammish repetition", 0xFBCEA83C8A378BF1),
    (b"xxhash", 0x32DD38952C4BC720),
])
def test_xxhash64_vectors(data: bytes, expected: int):
    assert xxhash64(data) == expected


def test_xxhash64_seed_and_long_inputs():
    assert xxhash64(b"xxhash", 20141025) == 0xB559B98D844E0635
    # Every input length path: stripes of 32, 8-byte, 4-byte and single-byte tails.
    values = {xxhash64(bytes(range(n))) for n in range(0, 80)}
    assert len(values) == 80
    assert all(0 <= v < 2 ** 64 for v in values)


def test_envoy_span_hash_is_a_seed_chain():
    # Envoy's HashUtil::xxHash64({"foo", "bar"}) (the repeated-header hash): each
    # string seeded with the hash of those before it.
    assert xxhash64(b"bar", xxhash64(b"foo")) == 17745830980996999794


@pytest.mark.parametrize("data, expected", [
    (b"foo", 9631199822919835226),
    (b"bar", 11474628671133349555),
    (b"foo\nbar", 16306510975912980159),
    (b"lyft", 12847078931730529320),
    (b"", 6142509188972423790),
])
def test_murmur2_vectors(data: bytes, expected: int):
    assert murmur2_64(data) == expected
