"""A tiny TCP server / client run inside test network namespaces (stdlib only, run as a script).

serve --name NAME --listen HOST:PORT [--listen ...]
    Answers every connection with one JSON line and closes it: its name, the UID it runs as,
    the local and peer addresses, and the original destination read with SO_ORIGINAL_DST
    (IPv4) / IP6T_SO_ORIGINAL_DST (IPv6): what a REDIRECTed connection was addressed to.
    Prints READY once every socket is listening. Stands in for the sidecar's capture
    listeners (15001 / 15006) and for plain app / remote servers.

connect [--source ADDR] HOST:PORT [HOST:PORT ...]
    Connects to each target in turn and prints a JSON list of the replies (or {"error": ...}).

Addresses are written ``1.2.3.4:80`` and ``[fd00::1]:80``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import threading

SO_ORIGINAL_DST = 80            # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value
SOL_IPV6 = 41


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def original_dst(conn: socket.socket) -> str | None:
    try:
        if conn.family == socket.AF_INET:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            return fmt(socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
        raw = conn.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return fmt(socket.inet_ntop(socket.AF_INET6, raw[8:24]), port)
    except OSError:
        return None                 # no conntrack entry


def serve(name: str, listens: list[str]) -> None:
    socks = []
    for text in listens:
        host, port = parse_addr(text)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(64)
        socks.append(s)

    def accept_loop(s: socket.socket) -> None:
        while True:
            conn, peer = s.accept()
            with conn:
                local = conn.getsockname()
                reply = {"name": name, "uid": os.getuid(), "local": fmt(local[0], local[1]),
                         "peer": fmt(peer[0], peer[1]), "orig": original_dst(conn)}
                try:
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass

    for s in socks:
        threading.Thread(target=accept_loop, args=(s,), daemon=True).start()
    print("READY", flush=True)
    threading.Event().wait()


def connect(targets: list[str], source: str | None, timeout: float) -> None:
    results = []
    for text in targets:
        host, port = parse_addr(text)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            if source:
                s.bind((source, 0))
            s.connect((host, port))
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            results.append(json.loads(data) if data else {"error": "closed without reply"})
        except (OSError, ValueError) as exc:
            results.append({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            s.close()
    print(json.dumps(results), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("serve")
    ps.add_argument("--name", required=True)
    ps.add_argument("--listen", action="append", required=True)
    pc = sub.add_parser("connect")
    pc.add_argument("--source")
    pc.add_argument("--timeout", type=float, default=2.0)
    pc.add_argument("targets", nargs="+")
    args = p.parse_args()
    if args.cmd == "serve":
        serve(args.name, args.listen)
    else:
        connect(args.targets, args.source, args.timeout)


if __name__ == "__main__":
    main()
