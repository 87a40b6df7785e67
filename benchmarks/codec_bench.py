"""Micro-benchmark of the HTTP/1 codec: feed() of both parser adapters, and head serialization.

Run: /work/venv/bin/python benchmarks/codec_bench.py [--number N]
Prints microseconds per operation (best of 5 repeats), one line per measurement.
The parsers are reused across operations, as on a keep-alive connection.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidecar.codec.http1 import get_parsers, serialize_request_head  # noqa: E402

# What curl or a service client sends through a sidecar: 6 headers.
REQUEST = (b"GET /api/v1/items?id=42 HTTP/1.1\r\n"
           b"Host: items.default.svc.cluster.local\r\n"
           b"User-Agent: curl/8.5.0\r\n"
           b"Accept: */*\r\n"
           b"Accept-Encoding: gzip, deflate\r\n"
           b"X-Request-Id: 3f2b6c1e-8a4d-4f7e-9c2b-5d1e7a9b0c3d\r\n"
           b"Connection: keep-alive\r\n"
           b"\r\n")

RESPONSE = (b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: 25\r\n"
            b"Date: Wed, 25 Nov 2026 19:09:06 GMT\r\n"
            b"Server: gunicorn\r\n"
            b"X-Envoy-Upstream-Service-Time: 3\r\n"
            b"\r\n"
            b'{"id":42,"name":"widget"}')

HEADERS = [("host", "items.default.svc.cluster.local"), ("user-agent", "curl/8.5.0"),
           ("accept", "*/*"), ("accept-encoding", "gzip, deflate"),
           ("x-request-id", "3f2b6c1e-8a4d-4f7e-9c2b-5d1e7a9b0c3d"),
           ("x-forwarded-proto", "http")]


def best_us(stmt: object, number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6  # type: ignore


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--number", type=int, default=20000)
    number = args.parse_args().number
    print(f"python {sys.version.split()[0]}, {number} ops x best of 5")
    for name in ("httptools", "h11"):
        request_parser, response_parser = get_parsers(name)
        n = number if name == "httptools" else max(number // 10, 100)
        req = request_parser()
        assert len(req.feed(REQUEST)) == 2
        us = best_us(lambda: req.feed(REQUEST), n)
        print(f"{name:10s} request  feed(6-header GET)         {us:7.2f} us/op")
        resp = response_parser()

        def response() -> None:
            resp.expect("GET")
            resp.feed(RESPONSE)

        response()
        assert resp.feed(b"") == [] and resp._done
        print(f"{name:10s} response expect()+feed(200, 5 hdrs) {best_us(response, n):7.2f} us/op")
    us = best_us(lambda: serialize_request_head("GET", "/api/v1/items?id=42", HEADERS), number)
    print(f"{'shared':10s} serialize_request_head(6 headers) {us:7.2f} us/op")


if __name__ == "__main__":
    main()
