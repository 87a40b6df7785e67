"""sidecar.codec.hpack against the hpack library it replaces inside h2.

RFC 7541 Appendix C, randomized exchanges both ways (ours encodes / hpack decodes
and the reverse, over one long-lived pair so the dynamic tables evolve), table
eviction and size updates, and the error cases: the same hpack exception class
from both.
"""

from __future__ import annotations

import random

import hpack
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import (HPACKDecodingError, InvalidTableIndexError, InvalidTableSizeError,
                              OversizedHeaderListError)

from sidecar.codec import hpack as ours


def headers(*pairs: str) -> list[tuple[bytes, bytes]]:
    return [(pairs[i].encode(), pairs[i + 1].encode()) for i in range(0, len(pairs), 2)]


REQUESTS = [
    headers(":method", "GET", ":scheme", "http", ":path", "/", ":authority", "www.example.com"),
    headers(":method", "GET", ":scheme", "http", ":path", "/", ":authority", "www.example.com",
            "cache-control", "no-cache"),
    headers(":method", "GET", ":scheme", "https", ":path", "/index.html",
            ":authority", "www.example.com", "custom-key", "custom-value"),
]
RESPONSES = [
    headers(":status", "302", "cache-control", "private", "date", "Mon, 21 Oct 2013 20:13:21 GMT",
            "location", "https://www.example.com"),
    headers(":status", "307", "cache-control", "private", "date", "Mon, 21 Oct 2013 20:13:21 GMT",
            "location", "https://www.example.com"),
    headers(":status", "200", "cache-control", "private", "date", "Mon, 21 Oct 2013 20:13:22 GMT",
            "location", "https://www.example.com", "content-encoding", "gzip",
            "set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
]
# RFC 7541 C.3 / C.4 (requests, without / with Huffman) and C.5 / C.6 (responses, table 256).
C3 = ["828684410f7777772e6578616d706c652e636f6d",
      "828684be58086e6f2d6361636865",
      "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"]
C4 = ["828684418cf1e3c2e5f23a6ba0ab90f4ff",
      "828684be5886a8eb10649cbf",
      "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"]
C5 = ["4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d54"
      "6e1768747470733a2f2f7777772e6578616d706c652e636f6d",
      "4803333037c1c0bf",
      "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f"
      "3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b2076"
      "657273696f6e3d31"]
C6 = ["488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f"
      "0b97c8e9ae82ae43d3",
      "4883640effc1c0bf",
      "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335df"
      "dfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007"]


@pytest.mark.parametrize("blocks, lists, huffman, table_size", [
    (C3, REQUESTS, False, 4096), (C4, REQUESTS, True, 4096),
    (C5, RESPONSES, False, 256), (C6, RESPONSES, True, 256),
], ids=["C.3", "C.4", "C.5", "C.6"])
def test_rfc7541_appendix_c(blocks: list[str], lists: list, huffman: bool, table_size: int) -> None:
    encoder, decoder, reference = ours.Encoder(), ours.Decoder(), hpack.Decoder()
    for codec in (encoder, decoder, reference):
        codec.header_table_size = table_size
    encoder.table_size_changes.clear()       # the RFC's blocks start with no size update
    encoder.table.resized = False
    for block_hex, expected in zip(blocks, lists):
        block = bytes.fromhex(block_hex)
        assert reference.decode(block, raw=True) == expected      # the vectors are right
        assert decoder.decode(block, raw=True) == expected
        assert encoder.encode(expected, huffman=huffman) == block
    # The dynamic tables end as the RFC lists them (C.3.3 / C.5.3), newest first.
    assert decoder.table.size == encoder.table.size == {4096: 164, 256: 215}[table_size]
    assert list(reversed(decoder.table.entries)) == list(reversed(encoder.table.entries))


def random_headers(rnd: random.Random) -> list[tuple]:
    names = [b":status", b":path", b":authority", b"date", b"content-type", b"cookie",
             b"x-request-id", b"server", b"x-" + bytes(range(0x80, 0x90)), b"authorization"]
    values = [b"200", b"/", b"", b"text/plain", b"abc", b"gzip, deflate"]
    out: list[tuple] = []
    for _ in range(rnd.randint(0, 10)):
        name = rnd.choice(names) if rnd.random() < 0.8 else bytes(
            rnd.randrange(256) for _ in range(rnd.randint(1, 12)))
        value = rnd.choice(values) if rnd.random() < 0.5 else bytes(
            rnd.randrange(256) for _ in range(rnd.randint(0, 300 if rnd.random() < 0.05 else 30)))
        roll = rnd.random()
        if roll < 0.05:
            out.append((name, value, True))                       # sensitive: never indexed
        elif roll < 0.1:
            out.append(NeverIndexedHeaderTuple(name, value))
        elif roll < 0.15:
            out.append((name.decode("latin-1"), value.decode("latin-1")))   # str: sent as UTF-8
        else:
            out.append((name, value))
    return out


def as_bytes(header: tuple) -> tuple[bytes, bytes]:
    return tuple(x if isinstance(x, bytes) else x.encode("utf-8") for x in header[:2])  # type: ignore


@pytest.mark.parametrize("seed", range(4))
def test_random_exchanges_both_ways(seed: int) -> None:
    rnd = random.Random(seed)
    theirs_enc, ours_enc = hpack.Encoder(), ours.Encoder()
    theirs_dec, ours_dec = hpack.Decoder(), ours.Decoder()
    plain_dec = ours.Decoder(1 << 20, plain=True)       # as our HTTP/2 connection decodes
    ours_dec.max_header_list_size = theirs_dec.max_header_list_size = 1 << 20
    for _ in range(1500):
        if rnd.random() < 0.03:
            # SETTINGS_HEADER_TABLE_SIZE from the peer: the encoder must signal it (4.2).
            size = rnd.choice([0, 64, 256, 4096, 8192])
            theirs_enc.header_table_size = ours_enc.header_table_size = size
            theirs_dec.max_allowed_table_size = ours_dec.max_allowed_table_size = max(size, 4096)
            plain_dec.max_allowed_table_size = max(size, 4096)
        block_list = random_headers(rnd)
        huffman = rnd.random() < 0.8
        ours_block = ours_enc.encode(block_list, huffman=huffman)
        # Same indexing choices as hpack: byte for byte the same block.
        assert ours_block == theirs_enc.encode(block_list, huffman=huffman)
        expected = [as_bytes(h) for h in block_list]
        # ours -> hpack, and hpack -> ours (the same bytes, so the tables stay in step).
        decoded_theirs = theirs_dec.decode(ours_block, raw=True)
        decoded_ours = ours_dec.decode(ours_block, raw=True)
        assert decoded_theirs == decoded_ours == expected
        assert [type(h) for h in decoded_ours] == [type(h) for h in decoded_theirs]
        assert all(isinstance(h, HeaderTuple) for h in decoded_ours)
        decoded_plain = plain_dec.decode(ours_block, raw=True)
        assert decoded_plain == expected and all(type(h) is tuple for h in decoded_plain)
    assert ours_dec.table.entries, "the exchange never used the dynamic table"


def test_hpack_encoder_drives_our_decoder_with_evictions() -> None:
    """hpack's encoder with a small table: every block evicts; our decoder follows."""
    rnd = random.Random(7)
    encoder, decoder, reference = hpack.Encoder(), ours.Decoder(), hpack.Decoder()
    encoder.header_table_size = 200
    evicted = 0
    for i in range(500):
        block_list = [(b"x-n%d" % rnd.randrange(20), b"v" * rnd.randrange(60)) for _ in range(3)]
        block = encoder.encode(block_list)
        before = decoder.table.first
        assert decoder.decode(block, raw=True) == reference.decode(block, raw=True) == block_list
        evicted += decoder.table.first - before
        assert decoder.table.size <= 200
        assert decoder.table.entries == list(reversed(reference.header_table.dynamic_entries))
    assert evicted > 100


def test_an_entry_larger_than_the_table_empties_it() -> None:
    encoder, decoder = ours.Encoder(), ours.Decoder()
    encoder.header_table_size = decoder.header_table_size = 100
    block = encoder.encode([(b"a", b"1"), (b"b", b"x" * 80)])
    assert decoder.decode(block, raw=True) == [(b"a", b"1"), (b"b", b"x" * 80)]
    assert decoder.table.entries == encoder.table.entries == []
    # "a: 1" was evicted with everything else: it is sent as a literal again.
    again = encoder.encode([(b"a", b"1")])
    assert again[0] == 0x40
    assert hpack.Decoder().decode(again, raw=True) == [(b"a", b"1")]


def test_size_updates_go_out_first_and_in_order() -> None:
    encoder = ours.Encoder()
    encoder.encode([(b"x-a", b"1")])
    encoder.header_table_size = 0
    encoder.header_table_size = 1000
    block = encoder.encode([(b"x-a", b"1")])
    # 0x20 (size 0), then 1000 with a 5-bit prefix, then the field as a new literal.
    assert block.startswith(bytes([0x20, 0x3F, 0xC9, 0x07, 0x40]))
    reference = hpack.Decoder()
    assert reference.decode(block, raw=True) == [(b"x-a", b"1")]
    assert reference.header_table_size == 1000
    assert encoder.encode([]) == b""            # signalled once


def test_decoder_follows_size_updates_and_shrinks() -> None:
    decoder = ours.Decoder()
    decoder.decode(bytes.fromhex(C3[0]), raw=True)
    assert decoder.table.entries
    assert decoder.decode(bytes([0x20]), raw=True) == []
    assert decoder.table.entries == [] and decoder.header_table_size == 0


ERRORS = {
    "index 0": (b"\x80", InvalidTableIndexError),
    "index past the table": (b"\xff\x00", InvalidTableIndexError),
    "name index past the table": (b"\x7f\x00\x01a", InvalidTableIndexError),
    "truncated integer": (b"\xff", HPACKDecodingError),
    "integer too long": (b"\xff\xff\xff\xff\xff\xff\x01", HPACKDecodingError),
    "truncated name": (b"\x40\x05ab", HPACKDecodingError),
    "truncated value": (b"\x40\x01a\x05ab", HPACKDecodingError),
    "missing value": (b"\x40\x01a", HPACKDecodingError),
    "size update after a field": (b"\x82\x20", HPACKDecodingError),
    "size update above the maximum": (b"\x3f\xe2\x1f", InvalidTableSizeError),
    "Huffman EOS": (b"\x00\x01a\x84\xff\xff\xff\xff", HPACKDecodingError),
    "Huffman padding not ones": (b"\x00\x01a\x81\x00", HPACKDecodingError),
    "Huffman padding over 7 bits": (b"\x00\x01a\x82\x1f\xff", HPACKDecodingError),
}


@pytest.mark.parametrize("block, error", ERRORS.values(), ids=ERRORS.keys())
def test_errors_are_hpacks(block: bytes, error: type) -> None:
    with pytest.raises(error):
        hpack.Decoder().decode(block, raw=True)        # the case is an error for hpack too
    with pytest.raises(error) as caught:
        ours.Decoder().decode(block, raw=True)
    # The class h2 tells apart: an oversized list is a DoS, anything else a protocol error.
    assert type(caught.value) is not OversizedHeaderListError


def test_oversized_header_list() -> None:
    block = hpack.Encoder().encode([(b"x-a", b"v" * 100), (b"x-b", b"v" * 100)])
    limit = 32 + 3 + 100 + 10           # room for the first field only
    reference, decoder = hpack.Decoder(limit), ours.Decoder(limit)
    with pytest.raises(OversizedHeaderListError):
        reference.decode(block, raw=True)
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(block, raw=True)
    assert ours.Decoder(limit + 200).decode(block, raw=True) == [(b"x-a", b"v" * 100),
                                                                 (b"x-b", b"v" * 100)]


def test_table_not_shrunk_to_a_lowered_maximum() -> None:
    """Our SETTINGS lowered the table size; a peer that never sent the update is wrong (4.2)."""
    decoder = ours.Decoder()
    decoder.max_allowed_table_size = 100
    with pytest.raises(InvalidTableSizeError):
        decoder.decode(b"\x82", raw=True)
    assert decoder.decode(b"\x3f\x45\x82", raw=True) == [(b":method", b"GET")]   # 100, then a field


def test_text_mode_and_utf8_errors() -> None:
    block = hpack.Encoder().encode([("x-é", "ü")])
    assert ours.Decoder().decode(block) == hpack.Decoder().decode(block) == [("x-é", "ü")]
    bad = b"\x00\x01a\x01\xff"
    with pytest.raises(HPACKDecodingError):
        hpack.Decoder().decode(bad)
    with pytest.raises(HPACKDecodingError):
        ours.Decoder().decode(bad)
    assert ours.Decoder().decode(bad, raw=True) == [(b"a", b"\xff")]


def test_dict_headers_put_pseudo_headers_first() -> None:
    headers_dict = {"x-a": "1", ":status": "200"}
    block = ours.Encoder().encode(headers_dict)
    assert block == hpack.Encoder().encode(headers_dict)
    assert hpack.Decoder().decode(block) == [(":status", "200"), ("x-a", "1")]


def test_huffman_every_byte_value() -> None:
    data = bytes(range(256)) * 3
    encoded = ours.huffman_encode(data)
    assert encoded == hpack.huffman.HuffmanEncoder(
        hpack.huffman_constants.REQUEST_CODES, hpack.huffman_constants.REQUEST_CODES_LENGTH
    ).encode(data)
    assert ours.huffman_decode(encoded, 0, len(encoded)) == data

