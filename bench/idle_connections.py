"""Broker memory with many idle client connections.

Starts a fresh ``distributary serve`` on 127.0.0.1 (a free port, a temporary
data dir), reads its resident set size (VmRSS) before and after opening
``--connections`` idle TCP connections (each completes a Hello round trip so
the broker has really set it up), checks that every connection is still open,
and prints a table row and one JSON line.

    .venv/bin/python -m bench.idle_connections --connections 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

from bench.broker_process import HOST, start_broker
from client.protocol.connection import ClientConnection
from client.protocol.messages import HelloRequest


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def hello(sock: socket.socket) -> None:
    protocol = ClientConnection()
    _, data = protocol.send_request(HelloRequest(client_id="idle-bench"))
    sock.sendall(data)
    for _ in range(100):  # bounded: a Hello response is a few hundred bytes
        protocol.receive_data(sock.recv(65536))
        if protocol.next_response() is not None:
            return
    raise RuntimeError("no Hello response")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    if not 0 < args.connections <= 10_000:
        parser.error("--connections must be in 1..10000")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.connections + 256
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    with tempfile.TemporaryDirectory(prefix="distributary-idle-") as data_dir:
        process, address = start_broker(data_dir)
        port = int(address.rpartition(":")[2])
        sockets: list[socket.socket] = []
        try:
            time.sleep(0.5)
            before = rss_kib(process.pid)
            for _ in range(args.connections):
                sock = socket.create_connection((HOST, port), timeout=10)
                hello(sock)
                sockets.append(sock)
            time.sleep(1.0)
            after = rss_kib(process.pid)
            still_open = 0
            for sock in sockets:
                sock.setblocking(False)
                try:
                    still_open += sock.recv(1) != b""
                except BlockingIOError:
                    still_open += 1
        finally:
            for sock in sockets:
                sock.close()
            process.terminate()
            process.wait(15)
    row = {
        "bench": "idle_connections",
        "connections": args.connections,
        "still_open": still_open,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "kib_per_connection": round((after - before) / args.connections, 1),
        "cpus": os.cpu_count(),
    }
    print("| connections | still open | broker RSS before | after | per connection |")
    print("|---|---|---|---|---|")
    print(
        f"| {args.connections} | {still_open} | {row['rss_before_mib']} MiB "
        f"| {row['rss_after_mib']} MiB | {row['kib_per_connection']} KiB |"
    )
    print(json.dumps(row))
    return 0 if still_open == args.connections else 1


if __name__ == "__main__":
    sys.exit(main())
