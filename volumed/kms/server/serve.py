"""``volumed kms serve``: open the keystore, bind, print how to reach and trust the server, serve.

TLS by default (the administrator's --tls-cert/--tls-key, else the self-signed certificate of
volumed.kms.server.tls); plain HTTP only with --insecure-http and only on a loopback address.
The HTTP server is uvicorn with httptools (pinned in pyproject.toml). The listening socket is bound
here (port 0 picks a free port, which the ready line names). ``check(url)`` is the readiness probe
behind ``--check``. Caller: volumed.cli.kms_cmd.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import ssl
import sys
import urllib.error
import urllib.request
from types import FrameType

from volumed.clock import FakeClock, SYSTEM_CLOCK
from volumed.errors import UsageError
from volumed.kms.server import tls
from volumed.kms.server.app import KeyServer
from volumed.kms.store.keystore import Keystore

DEFAULT_LISTEN = "127.0.0.1:8443"


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {listen!r} is not ADDR:PORT; use e.g. 0.0.0.0:8443 or 127.0.0.1:0")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto
    # says TCP, and without it every answer (headers, then body) waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --listen") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _fork_workers(n: int) -> list[int]:
    """Fork ``n`` worker processes (before any thread exists) that die with this process; returns
    their pids in the parent, [] in a child."""
    import ctypes
    import signal

    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            try:  # PR_SET_PDEATHSIG: a kill -9 of the server takes its workers along
                ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
            except (OSError, AttributeError):
                pass
            if os.getppid() == 1:
                os._exit(0)
            return []
        pids.append(pid)
    return pids


def serve(*, keystore: str, listen: str, tls_cert: str | None, tls_key: str | None,
          insecure_http: bool, rate: float, burst: float | None, fake_time: float | None = None,
          workers: int = 1) -> int:
    """Serve until SIGTERM/SIGINT. ``workers`` processes (forked after the socket is bound, each
    with its own key service and group commit on the one keystore; SQLite serialises their
    writes) accept on the same socket: one Python process uses about one core."""
    import signal

    import uvicorn

    host, port = parse_listen(listen)
    if insecure_http and not is_loopback(host):
        raise UsageError(f"--insecure-http serves keys without TLS and is allowed only on a loopback "
                         f"address, not {host}; drop --insecure-http to serve over TLS")
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together; give both or neither")
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    clock = FakeClock(fake_time) if fake_time is not None else SYSTEM_CLOCK
    Keystore(keystore).close()  # create/upgrade it once, before any worker opens it
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    fp = None
    if not insecure_http:
        if tls_cert:
            cert, key = tls_cert, tls_key
        else:
            cert, key, created = tls.ensure_certificate(os.path.abspath(keystore), [host])
            if created:
                print(f"created a self-signed TLS certificate {cert}", file=sys.stderr)
        fp = tls.fingerprint(cert)
        ssl_certfile, ssl_keyfile = cert, key
    sock = _bind(host, port)
    children = _fork_workers(workers - 1) if fake_time is None else []
    if children:
        def stop_children(signum: int, _frame: FrameType | None) -> None:
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            signal.default_int_handler(signum, _frame) if signum == signal.SIGINT else sys.exit(0)
        signal.signal(signal.SIGTERM, stop_children)
    is_worker = not children and workers > 1 and fake_time is None
    try:
        app = KeyServer(keystore, clock=clock, rate=rate, burst=burst)
    except BaseException:
        if is_worker:  # the server process reports the same failure once, as one line
            os._exit(1)
        raise
    try:
        port = sock.getsockname()[1]
        scheme = "http" if insecure_http else "https"
        shown = f"[{host}]" if ":" in host else host
        ready: dict[str, object] = {"url": f"{scheme}://{shown}:{port}", "keystore": app.store.directory,
                 "region": app.region, "account": app.account}
        if fp:
            ready.update(certificate=ssl_certfile, sha256_fingerprint=fp)
        if not is_worker:
            print(json.dumps(ready), flush=True)
        config = uvicorn.Config(app, http="httptools", loop="asyncio", lifespan="on", log_level="warning",
                                access_log=False, timeout_keep_alive=75, limit_concurrency=2048,
                                backlog=1024, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
    finally:
        app.close()
        if is_worker:
            os._exit(0)
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    return 0


def check(url: str, ca_bundle: str | None) -> tuple[bool, str]:
    """Readiness: GET {url}/ping answers {"status": "ok"}. TLS is verified against ``ca_bundle``
    (or the system store)."""
    ctx = None
    if url.startswith("https://"):
        ctx = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=5, context=ctx) as resp:
            ok = json.loads(resp.read() or b"{}").get("status") == "ok"
            return ok, f"{url} is ready" if ok else f"{url} answered but is not ready"
    except urllib.error.HTTPError as exc:
        return False, f"{url} is not ready (HTTP {exc.code})"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url} is not reachable: {reason}"
