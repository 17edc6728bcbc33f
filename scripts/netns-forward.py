#!/usr/bin/env python3
"""Forward TCP from one network namespace's loopback to this one's, for tests.

    netns-forward.py PID LISTEN_PORT TARGET_PORT

Listens on 127.0.0.1:LISTEN_PORT inside the network namespace of process PID (a container)
and forwards each connection to 127.0.0.1:TARGET_PORT here. scripts/check-image.sh uses it to
let the README's container command reach a Glance on the host's loopback as it would reach
glance.example: nothing listens beyond a loopback. Prints "ready" once listening; runs until
killed. Needs root (setns).
"""
import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000


def setns(fd):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        sys.exit("netns-forward: setns: %s" % os.strerror(ctypes.get_errno()))


def pipe(src, dst):
    """Copy src to dst until src ends, then end dst's writing side."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def serve(conn, target_port):
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port), timeout=10)
        upstream.settimeout(None)
    except OSError:
        conn.close()
        return
    back = threading.Thread(target=pipe, args=(upstream, conn), daemon=True)
    back.start()
    pipe(conn, upstream)
    back.join()
    conn.close()
    upstream.close()


def main():
    pid, listen_port, target_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open("/proc/%s/ns/net" % pid, os.O_RDONLY)
    # The listening socket is made in the container's namespace (a socket stays in the
    # namespace it was made in); this thread then comes home to connect out.
    setns(there)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(64)
    setns(home)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn, target_port), daemon=True).start()


if __name__ == "__main__":
    main()
