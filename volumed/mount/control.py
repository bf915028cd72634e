"""The daemon's control channel: a unix socket speaking line-delimited JSON, for root only.

The socket is ``<run dir>/<mount id>.sock`` (directory 0700, socket 0600) and the server also checks
each peer's SO_PEERCRED uid is 0. One request per line, one reply per line; the messages, their
types and error codes are volumed.mount.protocol's.

``serve(path, handler)`` is the trio server (caller: the daemon; ``handler`` answers a decoded
request with a reply); ``ControlClient`` the blocking client every caller uses (the CLI, the
mount's snapshots, the pytest plugin); ``request(path, wire)`` its raw transport (tests speak raw
JSON through it).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from volumed.mount import paths
from volumed.mount.protocol import (ControlError, ErrorCode, ErrorReply, ProtocolError, Reply,
                                    ReplyT, Request, RequestOf, Snapshot, SnapshotReply, Status,
                                    StatusRecord, Unmount, Wire, decode_request, encode_reply,
                                    encode_request)
from volumed.snapshot.mounted import LiveSnapshotOrder

MAX_LINE = 1 << 16

Handler = Callable[[Request], Awaitable[Reply]]


def peer_uid(sock: socket.socket | trio.socket.SocketType) -> int:
    """The uid of the process at the other end of a connected unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    uid: int = struct.unpack("3i", creds)[1]
    return uid


async def serve(path: str | os.PathLike[str], handler: Handler, *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``path`` until cancelled; ``handler`` answers each decoded request."""
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


def _line(reply: Reply) -> bytes:
    return json.dumps(encode_reply(reply)).encode() + b"\n"


async def answer(line: bytes, handler: Handler) -> Reply:
    """The reply to one request line: decoded, handled, every failure an error reply."""
    try:
        return await handler(decode_request(json.loads(line)))
    except ProtocolError as exc:
        return ErrorReply(exc.error_code, str(exc))
    except ValueError as exc:  # not JSON
        return ErrorReply(ErrorCode.INVALID_REQUEST, f"malformed control message: {exc}")
    except Exception as exc:  # a bad request must not take the daemon down
        return ErrorReply(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")


async def _session(conn: trio.socket.SocketType, handler: Handler) -> None:
    """One client connection: refuse non-root peers, then answer request lines until EOF."""
    with conn:
        if peer_uid(conn) != 0:
            await conn.send(_line(ErrorReply(ErrorCode.NOT_ROOT, "control channel is for root only")))
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
                await conn.send(_line(await answer(line, handler)))


def request(path: str | os.PathLike[str], msg: Wire, *, timeout: float = 10.0) -> Wire:
    """Send one wire request to the daemon at ``path`` and return its wire reply (raises OSError
    if the daemon is not there)."""
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
    reply = json.loads(buf)
    if not isinstance(reply, dict):
        raise ConnectionError(f"malformed reply from {path}")
    return reply


class ControlClient:
    """The typed client of one daemon's control channel. ``call`` raises OSError when the daemon
    does not answer and ControlError (UnsupportedRequest for an op the daemon does not know) for
    an error reply."""

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float = 10.0):
        self.socket_path = socket_path
        self.timeout = timeout

    @classmethod
    def for_mountpoint(cls, mountpoint: str | os.PathLike[str], *,
                       timeout: float = 10.0) -> "ControlClient":
        """The client of the daemon serving ``mountpoint`` (in this run directory)."""
        return cls(paths.socket_path(paths.mount_id(mountpoint)), timeout=timeout)

    def call(self, req: RequestOf[ReplyT], *, timeout: float | None = None) -> ReplyT:
        reply = request(self.socket_path, encode_request(req),
                        timeout=self.timeout if timeout is None else timeout)
        if not reply.get("ok"):
            raise ControlError.for_reply(reply)
        return req.decode_reply(reply)

    def call_wire(self, msg: Wire) -> Wire:
        """A request given in its wire form, answered in wire form (the pytest plugin's raw
        ``control``): decoded first, so a malformed one fails here, as ProtocolError."""
        req: Any = decode_request(msg)
        reply: Reply = self.call(req)
        return encode_reply(reply)

    def status(self) -> StatusRecord:
        return self.call(Status()).status

    def unmount(self) -> None:
        self.call(Unmount())

    def snapshot(self, order: LiveSnapshotOrder, *, timeout: float) -> SnapshotReply:
        return self.call(Snapshot(order), timeout=timeout)
