#!/usr/bin/env python3
"""delay-relay: a TCP relay that adds a fixed one-way delay in each direction (a WAN link).

Usage: delay-relay.py LISTEN_PORT UPSTREAM_HOST:PORT [ONE_WAY_MS]   (default 25 ms)

This kernel has no netem, so the delay is added in user space: every chunk read from one side
is written to the other ONE_WAY_MS after it was read, in order (one queue per direction, each
entry stamped with its due time); bandwidth is not limited. A new connection also pays the TCP
handshake it would pay on the link: the first request bytes leave no earlier than one round
trip after the accept (SYN, SYN-ACK), plus the one-way delay. Listens on 127.0.0.1 only; runs
until SIGTERM or SIGINT, then prints "connections N" to stderr.
"""

import asyncio
import signal
import sys
import time

CHUNK = 256 * 1024
QUEUED = 256  # chunks per direction before the reader waits (64 MiB at most)


async def pump(reader, writer, delay, not_before):
    """Copies reader to writer, each chunk written `delay` after it was read."""
    queue = asyncio.Queue(QUEUED)

    async def read_side():
        try:
            while True:
                data = await reader.read(CHUNK)
                now = time.monotonic()
                await queue.put((max(now, not_before) + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((time.monotonic(), b""))

    async def write_side():
        broken = False
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0 and not broken:
                await asyncio.sleep(wait)
            try:
                if not data:
                    if not broken and writer.can_write_eof():
                        writer.write_eof()
                    return
                if not broken:  # after a failed write, drain the queue to the reader's end
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                broken = True

    await asyncio.gather(read_side(), write_side())


class Relay:
    """Accepts on the listen port, connects to the upstream, pumps both ways with the delay."""

    def __init__(self, host, port, delay):
        self.host, self.port, self.delay = host, port, delay
        self.connections = 0

    async def handle(self, c_reader, c_writer):
        self.connections += 1
        accepted = time.monotonic()
        try:
            u_reader, u_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            c_writer.close()
            return
        # Handshake on the link: the client could send only after SYN and SYN-ACK.
        up = pump(c_reader, u_writer, self.delay, accepted + 2 * self.delay)
        down = pump(u_reader, c_writer, self.delay, 0.0)
        try:
            await asyncio.gather(up, down)
        finally:
            for w in (u_writer, c_writer):
                w.close()


async def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    listen = int(sys.argv[1])
    host, _, port = sys.argv[2].rpartition(":")
    delay = (float(sys.argv[3]) if len(sys.argv) == 4 else 25.0) / 1000
    relay = Relay(host, int(port), delay)
    server = await asyncio.start_server(relay.handle, "127.0.0.1", listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()  # open connections are dropped with the loop
    print("connections %d" % relay.connections, file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
