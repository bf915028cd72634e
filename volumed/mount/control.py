"""The daemon's control channel: a unix socket speaking line-delimited JSON, for root only.

The socket is ``<run dir>/<mount id>.sock`` (directory 0700, socket 0600) and the server also checks
each peer's SO_PEERCRED uid is 0. One request per line, one JSON reply per line:
  {"op": "status"}                        -> {"ok": true, "status": {...}}
  {"op": "unmount"}                       -> {"ok": true}; the daemon then flushes, retires the grant,
                                             wipes the key, unmounts and exits
  {"op": "check"}                         -> {"ok": true}; run the real key check now
  {"op": "set-clock", "time": EPOCH}      -> test hook (daemon started with --allow-faults): from now on
  {"op": "set-clock", "advance": SECONDS}    the monitor's clock is a fake one at this time
  {"op": "fault", "kind": KIND, ...}      -> test hook (--allow-faults): inject a fault; see
                                             volumed.mount.faults.handle and docs/TESTING.md
Errors: {"ok": false, "error": "..."}.

``serve(path, handler)`` is the trio server (caller: the daemon); ``request(path, msg)`` the
blocking client (callers: the CLI and tests).
"""

from __future__ import annotations

import json
import os
import socket
import struct

import trio

MAX_LINE = 1 << 16


def peer_uid(sock) -> int:
    """The uid of the process at the other end of a connected unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


async def serve(path, handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``path`` until cancelled; ``handler(msg: dict) -> dict`` (async) answers requests."""
    path = os.fspath(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await listener.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    listener.listen(8)
    task_status.started()
    async with trio.open_nursery() as nursery:
        try:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(_session, conn, handler)
        finally:
            listener.close()


async def _session(conn, handler) -> None:
    """One client connection: refuse non-root peers, then answer request lines until EOF."""
    with conn:
        if peer_uid(conn) != 0:
            await conn.send(b'{"ok": false, "error": "control channel is for root only"}\n')
            return
        buf = b""
        while True:
            chunk = await conn.recv(4096)
            if not chunk:
                return
            buf += chunk
            if len(buf) > MAX_LINE:
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    reply = await handler(json.loads(line))
                except Exception as exc:  # a bad request must not take the daemon down
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                await conn.send(json.dumps(reply).encode() + b"\n")


def request(path, msg: dict, *, timeout: float = 10.0) -> dict:
    """Send one request to the daemon at ``path`` and return its reply (raises OSError if the
    daemon is not there)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.fspath(path))
        s.sendall(json.dumps(msg).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    if not buf:
        raise ConnectionError(f"no reply from {path}")
    return json.loads(buf)
