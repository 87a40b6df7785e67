"""HPACK (RFC 7541) compiled with mypyc: the Encoder and Decoder of our HTTP/2 connection
(codec/http2.py), with the interface and behaviour of the pure-Python ``hpack``
package, which stays the reference the tests hold them against (``encode``,
``decode(raw=True)``, ``header_table_size``, ``max_header_list_size``,
``max_allowed_table_size``):

- the encoder writes the same bytes as hpack's (same indexing choices: every
  non-sensitive field is added to the dynamic table; Huffman on every literal);
- the decoder returns hpack's ``HeaderTuple`` / ``NeverIndexedHeaderTuple`` and
  raises hpack's own exceptions with its messages: the connection turns
  ``OversizedHeaderListError`` into the DenialOfServiceError the HPACK-bomb
  defence counts, and every other ``HPACKError`` into a ProtocolError.

Huffman decoding walks hpack's (nghttp2's) 4-bit state table, one lookup per
nibble, not a bit at a time.
"""

from __future__ import annotations

from typing import Any, Final

from hpack.exceptions import (HPACKDecodingError, InvalidTableIndex, InvalidTableSizeError,
                              OversizedHeaderListError)
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import HUFFMAN_TABLE
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple

DEFAULT_TABLE_SIZE: Final = 4096
DEFAULT_MAX_HEADER_LIST_SIZE: Final = 2 ** 16
# hpack's limit on a prefixed integer's length (prefix octet included): longer is an error
# (RFC 7541 5.1 lets a decoder refuse what exceeds its limits).
VARINT_MAX_LENGTH: Final = 5

STATIC_TABLE: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"), (b":path", b"/"),
    (b":path", b"/index.html"), (b":scheme", b"http"), (b":scheme", b"https"),
    (b":status", b"200"), (b":status", b"204"), (b":status", b"206"), (b":status", b"304"),
    (b":status", b"400"), (b":status", b"404"), (b":status", b"500"),
    (b"accept-charset", b""), (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""), (b"accept-ranges", b""), (b"accept", b""),
    (b"access-control-allow-origin", b""), (b"age", b""), (b"allow", b""),
    (b"authorization", b""), (b"cache-control", b""), (b"content-disposition", b""),
    (b"content-encoding", b""), (b"content-language", b""), (b"content-length", b""),
    (b"content-location", b""), (b"content-range", b""), (b"content-type", b""),
    (b"cookie", b""), (b"date", b""), (b"etag", b""), (b"expect", b""), (b"expires", b""),
    (b"from", b""), (b"host", b""), (b"if-match", b""), (b"if-modified-since", b""),
    (b"if-none-match", b""), (b"if-range", b""), (b"if-unmodified-since", b""),
    (b"last-modified", b""), (b"link", b""), (b"location", b""), (b"max-forwards", b""),
    (b"proxy-authenticate", b""), (b"proxy-authorization", b""), (b"range", b""),
    (b"referer", b""), (b"refresh", b""), (b"retry-after", b""), (b"server", b""),
    (b"set-cookie", b""), (b"strict-transport-security", b""), (b"transfer-encoding", b""),
    (b"user-agent", b""), (b"vary", b""), (b"via", b""), (b"www-authenticate", b""),
)
STATIC_LENGTH: Final = 61


def _static_maps() -> tuple[dict[tuple[bytes, bytes], int], dict[bytes, int]]:
    """(name, value) -> index and name -> lowest index, as hpack's search looks them up."""
    pairs: dict[tuple[bytes, bytes], int] = {}
    names: dict[bytes, int] = {}
    for i, entry in enumerate(STATIC_TABLE, 1):
        pairs.setdefault(entry, i)
        names.setdefault(entry[0], i)
    return pairs, names


_STATIC_PAIRS, _STATIC_NAMES = _static_maps()

# The Huffman decoding table, one int per (state, nibble): next state | flags << 8 | symbol << 16.
_HUFFMAN_COMPLETE: Final = 1
_HUFFMAN_EMIT: Final = 2
_HUFFMAN_FAIL: Final = 4
_DECODE: Final[list[int]] = [s | (f << 8) | (sym << 16) for s, f, sym in HUFFMAN_TABLE]
_CODES: Final[list[int]] = list(REQUEST_CODES)
_CODE_BITS: Final[list[int]] = list(REQUEST_CODES_LENGTH)


def huffman_encode(data: bytes) -> bytes:
    out = bytearray()
    acc = 0
    bits = 0
    codes = _CODES
    lengths = _CODE_BITS
    for byte in data:
        n = lengths[byte]
        acc = (acc << n) | codes[byte]
        bits += n
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
        acc &= (1 << bits) - 1      # keeps acc below 2**38: a small (unboxed) int
    if bits:
        pad = 8 - bits
        out.append(((acc << pad) | ((1 << pad) - 1)) & 0xFF)   # EOS prefix as padding (5.2)
    return bytes(out)


def huffman_decode(data: bytes, start: int, end: int) -> bytes:
    """data[start:end] Huffman-decoded; HPACKDecodingError as hpack's decode_huffman."""
    if start >= end:
        return b""
    out = bytearray()
    table = _DECODE
    state = 0
    flags = 0
    for i in range(start, end):
        byte = data[i]
        entry = table[(state << 4) | (byte >> 4)]
        flags = (entry >> 8) & 0xFF
        if flags & _HUFFMAN_FAIL:
            raise HPACKDecodingError("Invalid Huffman string")
        if flags & _HUFFMAN_EMIT:
            out.append(entry >> 16)
        state = entry & 0xFF
        entry = table[(state << 4) | (byte & 0x0F)]
        flags = (entry >> 8) & 0xFF
        if flags & _HUFFMAN_FAIL:
            raise HPACKDecodingError("Invalid Huffman string")
        if flags & _HUFFMAN_EMIT:
            out.append(entry >> 16)
        state = entry & 0xFF
    if not flags & _HUFFMAN_COMPLETE:
        raise HPACKDecodingError("Incomplete Huffman string")
    return bytes(out)


def _encode_int(out: bytearray, value: int, prefix_bits: int, flags: int) -> None:
    """Append ``value`` as an HPACK integer with an N-bit prefix, ``flags`` or'ed into the first octet."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        out.append(flags | value)
        return
    out.append(flags | limit)
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)


def _decode_int(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """(value, octets consumed) of the integer at data[pos]; errors as hpack's decode_integer."""
    end = len(data)
    if pos >= end:
        raise HPACKDecodingError("Unable to decode HPACK integer representation")
    limit = (1 << prefix_bits) - 1
    number = data[pos] & limit
    index = 1
    if number == limit:
        shift = 0
        while True:
            if pos + index >= end:
                raise HPACKDecodingError("Unable to decode HPACK integer representation")
            byte = data[pos + index]
            index += 1
            if byte >= 128:
                number += (byte - 128) << shift
            else:
                number += byte << shift
                break
            shift += 7
            if index > VARINT_MAX_LENGTH:
                raise HPACKDecodingError("Variable integer representation is too long")
    return number, index


def _to_bytes(value: Any) -> bytes:
    if type(value) is bytes:
        return value                       # type: ignore[no-any-return]
    if type(value) is not str:
        value = str(value)
    return value.encode("utf-8")           # type: ignore[no-any-return]


class DynamicTable:
    """The dynamic table (RFC 7541 2.3.2, 4): entries oldest first, evicted from the front.

    With ``searchable`` it also keeps, for the encoder, the newest entry of each
    (name, value) and of each name by insertion number, so that a search finds
    what hpack's newest-first scan finds without scanning.
    """

    def __init__(self, searchable: bool) -> None:
        self.maxsize = DEFAULT_TABLE_SIZE
        self.size = 0
        self.resized = False
        self.entries: list[tuple[bytes, bytes]] = []
        self.first = 0                   # insertion number of entries[0]
        self.searchable = searchable
        self.pairs: dict[tuple[bytes, bytes], int] = {}
        self.names: dict[bytes, int] = {}

    def get(self, index: int) -> tuple[bytes, bytes]:
        """The entry at HPACK index ``index`` (1-based, static table first)."""
        if index > 0:
            if index <= STATIC_LENGTH:
                return STATIC_TABLE[index - 1]
            i = index - STATIC_LENGTH - 1
            n = len(self.entries)
            if i < n:
                return self.entries[n - 1 - i]
        raise InvalidTableIndex("Invalid table index %d" % index)

    def add(self, name: bytes, value: bytes) -> None:
        size = 32 + len(name) + len(value)
        if size > self.maxsize:
            self.clear()
            return
        entry = (name, value)
        seq = self.first + len(self.entries)
        self.entries.append(entry)
        self.size += size
        if self.searchable:
            self.pairs[entry] = seq
            self.names[name] = seq
        self.shrink()

    def clear(self) -> None:
        self.first += len(self.entries)
        self.entries = []
        self.size = 0
        self.pairs.clear()
        self.names.clear()

    def shrink(self) -> None:
        entries = self.entries
        evict = 0
        size = self.size
        while size > self.maxsize:
            name, value = entries[evict]
            size -= 32 + len(name) + len(value)
            if self.searchable:
                seq = self.first + evict
                # Only if no newer entry took its place in the maps.
                if self.pairs.get((name, value)) == seq:
                    del self.pairs[(name, value)]
                if self.names.get(name) == seq:
                    del self.names[name]
            evict += 1
        if evict:
            del entries[:evict]
            self.first += evict
        self.size = size

    def resize(self, newmax: int) -> None:
        oldmax = self.maxsize
        self.maxsize = newmax
        self.resized = newmax != oldmax
        if newmax <= 0:
            self.clear()
        elif oldmax > newmax:
            self.shrink()

    def index_of(self, seq: int) -> int:
        """The HPACK index of the entry inserted as number ``seq``."""
        return STATIC_LENGTH + 1 + (self.first + len(self.entries) - 1 - seq)


class Encoder:
    """hpack.Encoder's interface and output, compiled."""

    def __init__(self) -> None:
        self.table = DynamicTable(True)
        self.table_size_changes: list[int] = []

    @property
    def header_table_size(self) -> int:
        return self.table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.table.resize(int(value))
        if self.table.resized:
            self.table_size_changes.append(int(value))

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        out = bytearray()
        table = self.table
        if table.resized:
            for size in self.table_size_changes:
                _encode_int(out, size, 5, 0x20)
            self.table_size_changes = []
            table.resized = False
        if isinstance(headers, dict):
            # Pseudo-header fields first (hpack's order for a dict).
            items: Any = sorted(headers.items(), key=lambda kv: not _to_bytes(kv[0]).startswith(b":"))
        else:
            items = headers
        for header in items:
            kind = type(header)
            sensitive = False
            if kind is NeverIndexedHeaderTuple:
                sensitive = True
            elif kind is not HeaderTuple:
                if isinstance(header, HeaderTuple):
                    sensitive = not header.indexable
                elif len(header) > 2:
                    sensitive = bool(header[2])
            self._add(out, _to_bytes(header[0]), _to_bytes(header[1]), sensitive, huffman)
        return bytes(out)

    def _add(self, out: bytearray, name: bytes, value: bytes, sensitive: bool, huffman: bool) -> None:
        table = self.table
        # hpack's search: a full static match, else a full dynamic match (the newest),
        # else the static name, else the newest dynamic entry of that name.
        field = (name, value)
        index = _STATIC_PAIRS.get(field, 0)
        if not index:
            seq = table.pairs.get(field, -1)
            if seq >= 0:
                index = table.index_of(seq)
        if index:
            if index < 127:
                out.append(0x80 | index)        # (an indexed field: one octet, mostly)
            else:
                _encode_int(out, index, 7, 0x80)
            return
        index = _STATIC_NAMES.get(name, 0)
        if not index:
            seq = table.names.get(name, -1)
            if seq >= 0:
                index = table.index_of(seq)
        if index:
            if sensitive:
                _encode_int(out, index, 4, 0x10)
            else:
                _encode_int(out, index, 6, 0x40)
        else:
            out.append(0x10 if sensitive else 0x40)
            _encode_string(out, name, huffman)
        _encode_string(out, value, huffman)
        if not sensitive:
            table.add(name, value)


def _encode_string(out: bytearray, data: bytes, huffman: bool) -> None:
    if huffman:
        data = huffman_encode(data)
        _encode_int(out, len(data), 7, 0x80)
    else:
        _encode_int(out, len(data), 7, 0)
    out += data


class Decoder:
    """hpack.Decoder's interface, errors and limits, compiled."""

    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE,
                 plain: bool = False) -> None:
        self.table = DynamicTable(False)
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE
        # Plain (name, value) tuples instead of hpack's HeaderTuple classes (whose never-
        # indexed mark only a forwarding HPACK encoder would use): no Python-level
        # construction per field.
        self.plain = plain

    @property
    def header_table_size(self) -> int:
        return self.table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.table.resize(int(value))

    def decode(self, data: Any, raw: bool = False) -> list[Any]:
        buf: bytes = data if type(data) is bytes else bytes(data)
        table = self.table
        headers: list[Any] = []
        inflated = 0
        pos = 0
        end = len(buf)
        limit = self.max_header_list_size
        plain = self.plain
        while pos < end:
            first = buf[pos]
            header: Any = None
            if first & 0x80:
                index, used = _decode_int(buf, pos, 7)
                pos += used
                entry = table.get(index)
                # (Statements, not a conditional expression: compiled, that would take the
                # HeaderTuple apart into a plain tuple.)
                if plain:
                    header = entry
                else:
                    header = tuple.__new__(HeaderTuple, entry)
                name, value = entry
            elif first & 0x20 and not first & 0x40:
                # A dynamic table size update: only before the first field (RFC 7541 4.2).
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size, used = _decode_int(buf, pos, 5)
                pos += used
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                table.resize(size)
                continue
            else:
                indexing = bool(first & 0x40)
                if indexing:
                    name_index, used = _decode_int(buf, pos, 6)
                else:
                    name_index, used = _decode_int(buf, pos, 4)
                if name_index:
                    name = table.get(name_index)[0]
                    pos += used
                else:
                    name, pos = _decode_string(buf, pos + 1)
                value, pos = _decode_string(buf, pos)
                if plain:
                    header = (name, value)
                elif not indexing and first & 0x10:
                    header = tuple.__new__(NeverIndexedHeaderTuple, (name, value))
                else:
                    header = tuple.__new__(HeaderTuple, (name, value))
                if indexing:
                    table.add(name, value)
            headers.append(header)
            inflated += 32 + len(name) + len(value)
            if inflated > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received")
        if table.maxsize > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        if raw:
            return headers
        try:
            return [h.__class__(h[0].decode("utf-8"), h[1].decode("utf-8")) for h in headers]
        except UnicodeDecodeError as err:
            raise HPACKDecodingError("Unable to decode headers as UTF-8") from err


def _decode_string(data: bytes, pos: int) -> tuple[bytes, int]:
    """(the string literal at data[pos], the position after it)."""
    length, used = _decode_int(data, pos, 7)
    start = pos + used
    stop = start + length
    if stop > len(data):
        raise HPACKDecodingError("Truncated header block")
    if data[pos] & 0x80:
        return huffman_decode(data, start, stop), stop
    return data[start:stop], stop

