#!/usr/bin/env python3
"""Resident memory per idle WebSocket connection of a running wschat server.

    scripts/idle_memory.py PID [--host 127.0.0.1] [--port 9001] [--connections 10000] [--tls-ca PEM]

With --tls-ca the connections are wss:// (the server's certificate checked against that CA, for
the name localhost). Opens the connections (each in a room of its own, so no join notices pile up), waits for every
welcome, lets the server settle, and prints (server RSS after - before) / connections, read from
/proc/PID/status. Loopback only; stops by itself after two minutes at most.
"""
import argparse
import resource
import selectors
import socket
import ssl
import time

REQUEST = (
    "GET /?room=idle-{index} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS line")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--tls-ca", help="speak TLS, trusting this CA certificate (PEM)")
    arguments = parser.parse_args()
    context = ssl.create_default_context(cafile=arguments.tls_ca) if arguments.tls_ca else None
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    before = rss_kib(arguments.pid)
    selector = selectors.DefaultSelector()
    received = {}
    sockets = []
    started = time.monotonic()
    give_up = started + 120
    waiting = 0

    def pump(timeout):
        nonlocal waiting
        for key, _ in selector.select(timeout):
            connection = key.fileobj
            try:
                received[connection] += connection.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue
            if b'"welcome"' in received[connection]:
                selector.unregister(connection)
                waiting -= 1

    for index in range(arguments.connections):
        connection = socket.create_connection((arguments.host, arguments.port))
        if context:
            # A blocking handshake, one at a time: the server's memory is what is measured.
            connection = context.wrap_socket(connection, server_hostname="localhost")
        connection.setblocking(False)
        connection.send(REQUEST.format(index=index).encode())
        received[connection] = b""
        selector.register(connection, selectors.EVENT_READ)
        sockets.append(connection)
        waiting += 1
        while waiting > 200 and time.monotonic() < give_up:  # bounded concurrency
            pump(1)
    while waiting > 0 and time.monotonic() < give_up:
        pump(1)
    elapsed = time.monotonic() - started
    time.sleep(2)  # let the server's allocator settle
    after = rss_kib(arguments.pid)
    welcomed = arguments.connections - waiting
    print(
        f"connections={welcomed} seconds={elapsed:.1f} rss_before_kib={before} rss_after_kib={after} "
        f"bytes_per_connection={(after - before) * 1024 / max(welcomed, 1):.0f}"
    )


if __name__ == "__main__":
    main()
