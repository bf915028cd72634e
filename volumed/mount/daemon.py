"""The mount daemon: open the volume as the host, serve it over FUSE, watch the key, clean up.

Lifecycle (``serve``):
  1. harden the process (no core dumps, not dumpable, memory locked);
  2. take the volume's lock (one daemon per volume) and unwrap the data key as the host principal
     with the grant token (Volume.open);
  3. mount and serve the FUSE requests with the chosen engine (volumed.mount.engine: native worker
     threads, or pyfuse3 tasks on the loop) and run, on one trio loop, the key-access monitor, the
     control channel and a signal watcher; report readiness (``ready``) once all are up;
  4. when the file system is unmounted (``volumed unmount``, ``fusermount3 -u``, SIGTERM/SIGINT):
     flush, retire the grant, wipe the key, unmount, remove the run-time files, release the lock.
Each resource's undo is pushed on one ExitStack as the resource is taken (``_start``), so a start
that fails part-way undoes exactly what it took, in the same order.

Run as ``python -m volumed.mount.daemon``: the configuration (a MountConfig as JSON, holding the grant
token) arrives on stdin, the readiness line leaves on stdout (one JSON object), the log goes to
stderr. Callers: volumed.mount.client (background mounts) and ``volumed mount --foreground``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TypedDict

import pyfuse3
import trio

from volumed.clock import SYSTEM_CLOCK, Clock, FakeClock, iso_utc
from volumed.errors import StateError, VolumedError, aws_error_code
from volumed.hardening import current_state, harden_process
from volumed.mount import attach, control, engine, faults, keyservice, paths
from volumed.mount.fs import VolumeFS
from volumed.mount.latch import DEFAULT_RECOVERY_WINDOW, AccessLatch
from volumed.mount.monitor import DEFAULT_GRACE, KeyMonitor
from volumed.mount.protocol import (Check, ClockReply, Done, ErrorCode, ErrorReply, Fault, GilReply,
                                    Reply, Request, SetClock, Snapshot, SnapshotReply, Status,
                                    StatusRecord, StatusReply, Unmount)
from volumed.snapshot.mounted import daemon_snapshot
from volumed.volume.device import Volume

log = logging.getLogger("volumed.mount")

# The answer to a test hook sent to a daemon started without --allow-faults.
NEEDS_FAULTS = {
    "set-clock": "set-clock needs a daemon started with --allow-faults",
    "hold-gil": "hold-gil needs a daemon started with --allow-faults",
    "fault": "fault injection needs a mount started with --allow-faults",
}


class ReadyLine(TypedDict, total=False):
    """The daemon's one line to whoever started it: {"ok": true, "file": PATH} once serving, or
    {"ok": false, "error": ONE LINE, "exit_code": N} when it could not start."""

    ok: bool
    file: str
    error: str
    exit_code: int


@dataclasses.dataclass
class MountConfig:
    """Everything a daemon needs; serialised to JSON between the CLI and the daemon."""

    volume: str
    mountpoint: str
    kms: str
    grant: dict[str, str]
    allow_faults: bool = False
    recovery_window: float = DEFAULT_RECOVERY_WINDOW
    grace: float = DEFAULT_GRACE
    interval: float | None = None
    fake_time: float | None = None
    recording_journal: str | None = None
    threads: int = 4
    engine: str | None = None       # "native", "python" or None (native where the core allows)
    io_threads: int | None = None   # native: requests served on the CPU at once (default: the CPUs)
    io_depth: int | None = None     # native: worker threads at most (default: engine.default_io_depth)
    host_profile: str | None = None  # AWS profile of the host's key-server access key


class LiveClock(Clock):
    """The daemon's clock: the system clock until a test injects a fake one (set-clock)."""

    def __init__(self, base: Clock):
        self.base = base

    def time(self) -> float:
        return self.base.time()

    def set(self, t: float) -> None:
        if isinstance(self.base, FakeClock):
            self.base.set(t)
        else:
            self.base = FakeClock(t)

    def advance(self, seconds: float) -> None:
        self.set(self.base.time() + seconds)


class Daemon:
    """One mount being served. Built by ``serve``; its methods run on the trio loop."""

    def __init__(self, cfg: MountConfig, volume: Volume, attachment: attach.Attachment,
                 clock: LiveClock, backing: faults.FaultBacking | None = None):
        """Everything about the volume comes from ``volume.header``: the header Volume.open
        verified (MAC under the unwrapped key, context), never an earlier unverified read."""
        self.cfg = cfg
        self.volume = volume
        header = volume.header
        # Faults (--allow-faults only): the FUSE side sees the Volume through the fault layer.
        self.backing = backing
        self.faults: faults.FaultVolume | None = None
        if cfg.allow_faults and backing is not None:
            self.faults = faults.FaultVolume(volume, to_error=pyfuse3.FUSEError, backing=backing)
        self.header = header
        self.attachment = attachment
        self.host_client = host_client = attachment.host_client
        self.grant = grant = attachment.grant
        self.clock = clock
        self.mid = paths.mount_id(cfg.mountpoint)
        self.uuid = header.uuid
        self.context = dict(header.context)
        self.name = header.ebs_id
        self.size = header.size
        # cfg paths are real paths already: the daemon must never stat its own mount point
        # (a request to itself from the loop thread would deadlock).
        self.file = os.path.join(cfg.mountpoint, self.name)
        self.latch = AccessLatch(clock, paths.volume_state_path(self.uuid), grant.key_arn)
        self.fs: VolumeFS | None = None
        self.engine: engine.Engine
        core = volume.native_core
        io_threads = cfg.io_threads or engine.default_io_threads()
        if engine.choose(cfg.engine, core) == "native":
            self.engine = engine.NativeEngine(core, mountpoint=cfg.mountpoint,
                                              file_name=self.name, threads=io_threads,
                                              depth=cfg.io_depth)
        else:
            self.fs = VolumeFS(self.faults or volume, name=self.name, size=self.size,
                               latch=self.latch, threads=cfg.threads)
            self.engine = engine.PythonEngine(self.fs, mountpoint=cfg.mountpoint,
                                              threads=cfg.threads)
        self.monitor = KeyMonitor(
            check=self._check, counter=keyservice.change_counter(host_client), latch=self.latch,
            clock=clock, interval=cfg.interval, grace=cfg.grace, window=cfg.recovery_window)
        self._nursery: trio.Nursery | None = None
        # True once a closed latch's actions finished: the key is wiped and the kernel's cached
        # pages are dropped, so no path (not even a cached read) reaches the data any more.
        self.cut_off = False

    def _check(self) -> None:
        """The real authorization check (runs in a worker thread; raises on failure)."""
        self.host_client.generate_data_key_without_plaintext(
            KeyId=self.grant.key_arn, EncryptionContext=self.context, KeySpec="AES_256",
            GrantTokens=[self.grant.token])

    def _on_revoked(self) -> None:
        """Latch closed (in the closing thread; new requests already fail, the native engine's
        latch is closed here too): wipe the key, then invalidate the kernel's cached pages, in
        worker threads (the engine drains its requests in flight; wipe_key waits for the core's)."""
        self.engine.close_latch()
        if self._nursery is None:
            self.volume.wipe_key()
            self.cut_off = True
            return
        if self.fs is None:  # the native engine: drop cached pages at once, as VolumeFS does
            self._nursery.start_soon(self.engine.invalidate, log)
        self._nursery.start_soon(self._revoke_actions)

    async def _revoke_actions(self) -> None:
        """Drain, wipe the key, then drop the kernel's cached pages and attributes of the file."""
        await trio.to_thread.run_sync(self.engine.drain)
        await trio.to_thread.run_sync(self.volume.wipe_key)
        log.info("data key wiped")
        await self.engine.invalidate(log)
        self.cut_off = True

    def status(self) -> StatusRecord:
        """The status record of this mount (control op "status", ``volumed status``)."""
        latch = self.latch

        def iso(t: float | None) -> str | None:
            return None if t is None else iso_utc(t)

        return {
            "mountpoint": self.cfg.mountpoint,
            "volume": self.cfg.volume,
            "volume_uuid": self.uuid,
            "file": self.file,
            "key_arn": self.grant.key_arn,
            "encryption_context": self.context,
            "grant_id": self.grant.grant_id,
            "host_principal": self.grant.host_principal,
            "state": latch.state,
            "cut_off": self.cut_off,
            "state_since": iso(latch.since),
            "reason": latch.reason,
            "kms_unreachable_since": iso(latch.unreachable_since),
            "revoked_at": iso(latch.revoked_at),
            "last_successful_check": iso(latch.last_ok),
            "checks": self.monitor.checks,
            **self.engine.stats(),  # engine, io_threads, requests, bytes_read, bytes_written, ...
            "pid": os.getpid(),
            "hardening": current_state(),
            "kms": self.cfg.kms,
            "clock": self.clock.time(),
        }

    async def handle(self, req: Request) -> Reply:
        """Answer one control-channel request (volumed.mount.protocol)."""
        if isinstance(req, Status):
            return StatusReply(self.status())
        if isinstance(req, Unmount):
            log.info("unmount requested over the control channel")
            self.engine.terminate()
            return Done()
        if isinstance(req, Check):
            self.monitor.request_check()
            return Done()
        if isinstance(req, Snapshot):  # volumed.snapshot.mounted: flush + capture under a short pause, copy
            out = await trio.to_thread.run_sync(daemon_snapshot, self.volume, req.order,
                                                self.cfg.allow_faults)
            if out["ok"]:
                return SnapshotReply(out["snapshot_id"])
            return ErrorReply(ErrorCode.FAILED, out["error"])
        if not self.cfg.allow_faults:  # the rest are test hooks
            return ErrorReply(ErrorCode.FAULTS_NOT_ALLOWED, NEEDS_FAULTS[req.op])
        if isinstance(req, SetClock):
            if req.time is not None:
                self.clock.set(req.time)
            if req.advance is not None:
                self.clock.advance(req.advance)
            if req.check:
                self.monitor.request_check()
            return ClockReply(self.clock.time())
        if isinstance(req, Fault):
            return await self._fault(req)
        # HoldGil: tests show the native engine serves while Python holds the GIL.
        return hold_gil(min(req.seconds, 10.0))

    async def _fault(self, req: Fault) -> Reply:
        """The "fault" control op (volumed.mount.faults.handle), for --allow-faults daemons only."""
        fvol = self.faults
        if fvol is None or self.backing is None:
            return ErrorReply(ErrorCode.FAULTS_NOT_ALLOWED, NEEDS_FAULTS[req.op])
        disk_changes = req.kind in ("power-cut", "rollback")
        if disk_changes:
            # No native request may touch the backing file meanwhile: route them through the gate
            # (which fails them once the power is off) and wait for those in flight.
            self.engine.set_fault_hook(fvol.gate)
            await trio.to_thread.run_sync(self.engine.drain)
        try:
            reply = await trio.to_thread.run_sync(faults.handle, req.kind, req.params, fvol,
                                                  self.backing, self.header)
        except VolumedError as exc:
            return ErrorReply(ErrorCode.REFUSED, str(exc))
        finally:
            self.engine.set_fault_hook(fvol.gate if fvol.active else None)
        if disk_changes:
            log.warning("fault injected: %s", json.dumps(req.fields()))
            await self.engine.invalidate(log)  # the kernel's cached pages no longer match the disk
        return reply

    async def _signals(self) -> None:
        """SIGTERM/SIGINT unmount cleanly (as ``volumed unmount`` does)."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
            async for sig in sigs:
                log.info("signal %d: unmounting", sig)
                self.engine.terminate()

    async def run(self, ready: Callable[[], None]) -> None:
        """Serve until unmounted. ``ready()`` is called once the mount answers requests."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.latch.on_close(self._on_revoked)
            await nursery.start(control.serve, paths.socket_path(self.mid), self.handle)
            nursery.start_soon(self.monitor.run)
            nursery.start_soon(self._signals)
            nursery.start_soon(_call_soon, ready)
            await self.engine.serve()
            nursery.cancel_scope.cancel()

    def finish(self) -> None:
        """After the FUSE loop ended: flush (if still allowed), then retire the grant. (The key is
        wiped and the volume closed next, by ``_close_volume``.)"""
        if self.latch.serving and not getattr(self.backing, "lost", False):
            try:
                self.volume.flush()
            except Exception as exc:
                log.error("final flush failed: %s", keyservice.error_message(exc))
        self.attachment.retire()


def _close_volume(volume: Volume) -> None:
    """Wipe the key, then close the volume (a closed disk after a simulated power loss is only
    logged)."""
    try:
        volume.wipe_key()
    finally:
        try:
            volume.close()
        except OSError as exc:  # a simulated power loss: the disk is gone
            log.warning("closing the volume: %s", exc)


def hold_gil(seconds: float) -> GilReply:
    """Keep the GIL in this (the loop's) thread for ``seconds``: a pure-Python busy loop with the
    switch interval raised above it, so no other Python thread runs meanwhile. Returns the
    CLOCK_MONOTONIC interval held and how often another Python thread ran in between (0 unless
    something dropped the GIL)."""
    ran = [0]
    stop = threading.Event()

    def other() -> None:
        while not stop.is_set():
            ran[0] += 1
            time.sleep(0.001)

    t = threading.Thread(target=other, daemon=True)
    t.start()
    time.sleep(0.05)
    old = sys.getswitchinterval()
    sys.setswitchinterval(seconds + 5.0)
    try:
        t0 = time.monotonic()
        before = ran[0]
        while time.monotonic() - t0 < seconds:
            pass
        t1 = time.monotonic()
        during = ran[0] - before
    finally:
        sys.setswitchinterval(old)
        stop.set()
    t.join()
    return GilReply(t0, t1, during)


async def _call_soon(fn: Callable[[], None]) -> None:
    """Call ``fn()`` once the loop has run everything already scheduled (the FUSE workers)."""
    await trio.sleep(0)
    fn()


class VolumeBusy(StateError):
    """The per-volume lock is held: another daemon on this host serves the volume, under the grant
    ``holder_grant`` (None when it did not say)."""

    def __init__(self, uuid: str, holder_grant: str | None):
        super().__init__(f"volume {uuid} is already mounted on this host (volumed status shows where)")
        self.holder_grant = holder_grant


def _lock_volume(uuid: str, grant_id: str) -> int:
    """Take the per-volume lock (held for the daemon's life; released by the kernel when it dies)
    and write the serving grant's id into it. Raises VolumeBusy, naming the holder's grant, if
    another daemon on this host serves the volume."""
    fd = os.open(paths.volume_lock_path(uuid), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or None
        os.close(fd)
        raise VolumeBusy(uuid, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, grant_id.encode() + b"\n", 0)
    return fd


def _journal_path(cfg: MountConfig) -> str:
    """The undo journal of a fault-enabled mount: --test-recording-journal (kept for the test that
    asked for it) or ``<run dir>/<mount id>.journal`` (removed at unmount)."""
    return cfg.recording_journal or str(paths.run_dir() / f"{paths.mount_id(cfg.mountpoint)}.journal")


def _open_backing(cfg: MountConfig) -> faults.FaultBacking | None:
    """For a mount started with --allow-faults, the fault-injecting backing file (a recording one:
    volumed.mount.faults.FaultBacking); otherwise None for the Volume's own."""
    if cfg.recording_journal and not cfg.allow_faults:
        raise VolumedError("--test-recording-journal needs --allow-faults")
    if not cfg.allow_faults:
        return None
    return faults.FaultBacking(cfg.volume, _journal_path(cfg), native=cfg.engine != "python")


class RunFiles:
    """The mount's run-time files (record, control socket, default fault journal): written once
    the mount serves, removed at unmount. A start that failed never wrote them and removes nothing
    (another mount's files may have the same names)."""

    def __init__(self, cfg: MountConfig):
        self.cfg = cfg
        self.mid = paths.mount_id(cfg.mountpoint)
        self.written = False

    def write(self, file: str) -> None:
        paths.record_path(self.mid).write_text(json.dumps({
            "pid": os.getpid(), "mountpoint": self.cfg.mountpoint, "volume": self.cfg.volume,
            "file": file}))
        self.written = True

    def remove(self) -> None:
        if not self.written:
            return
        for p in (paths.socket_path(self.mid), paths.record_path(self.mid)):
            p.unlink(missing_ok=True)
        if self.cfg.allow_faults and not self.cfg.recording_journal:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_journal_path(self.cfg))


def _start(cfg: MountConfig, grant: attach.Grant, clock: LiveClock,
           stack: contextlib.ExitStack) -> Daemon:
    """Lock, open and mount; every resource's undo goes on ``stack`` as it is taken, so that
    closing the stack (after serving, or after a failed start) tears down in this order: flush
    and retire the grant, wipe the key and close the volume, unmount, remove the run-time files,
    release the lock (last: no other daemon serves the volume before this one is gone)."""
    header = Volume.read_header(cfg.volume)  # unverified: only its uuid (shape-checked) to lock
    host_client = keyservice.connect(cfg.kms, principal=grant.host_principal, clock=clock,
                                     profile=cfg.host_profile)
    attachment = attach.Attachment(host_client, grant)
    try:
        lock_fd = _lock_volume(header.uuid, grant.grant_id)
    except VolumeBusy as busy:
        # The grant is named after the volume and the host, so the serving daemon's grant is
        # usually this very one (CreateGrant returned it again): retire only a grant of our own.
        if busy.holder_grant is not None and busy.holder_grant != grant.grant_id:
            attachment.retire()
        raise
    stack.callback(os.close, lock_fd)
    stack.callback(attachment.retire)  # on any failure while the lock is held; once only
    run_files = RunFiles(cfg)
    stack.callback(run_files.remove)
    unmount = stack.enter_context(contextlib.ExitStack())  # filled once the engine exists
    with contextlib.ExitStack() as opening:
        backing = _open_backing(cfg)
        if backing is not None:
            opening.callback(backing.close)
        try:
            volume = Volume.open(cfg.volume, kms=host_client, grant_tokens=[grant.token],
                                 backing=backing)
        except Exception as exc:
            code = aws_error_code(exc)
            if code is None:
                raise
            raise VolumedError(f"cannot open {cfg.volume} as the host: {keyservice.error_message(exc)}",
                               code=code) from None
        opening.pop_all()  # the volume owns the backing file now
    stack.callback(_close_volume, volume)
    if volume.header.uuid != header.uuid:  # the lock above was taken for the uuid read first
        raise StateError(f"the header of {cfg.volume} changed while it was being mounted: retry")
    daemon = Daemon(cfg, volume, attachment, clock, backing)
    stack.callback(daemon.finish)
    unmount.callback(daemon.engine.close)
    daemon.latch.mark_ok()
    daemon.latch.clear_record()
    daemon.engine.mount()
    run_files.write(daemon.file)
    log.info("serving %s at %s (key %s, grant %s, %s engine, %d threads)", cfg.volume,
             daemon.file, grant.key_arn, grant.grant_id, daemon.engine.name, daemon.engine.threads)
    return daemon


def serve(cfg: MountConfig, ready: Callable[[ReadyLine], None]) -> None:
    """Open, mount and serve ``cfg.volume`` at ``cfg.mountpoint`` until unmounted.

    ``ready(result)`` is called exactly once: {"ok": True, "file": path} when the mount serves,
    or {"ok": False, "error": one line, "exit_code": n} when it could not start (after what it
    had taken is undone).
    """
    harden_process(lock_memory=True)  # the daemon always tries (and logs a failure)
    clock = LiveClock(FakeClock(cfg.fake_time) if cfg.fake_time is not None else SYSTEM_CLOCK)
    grant = attach.Grant.from_json(cfg.grant)
    failure: ReadyLine | None = None
    served = False
    try:
        with contextlib.ExitStack() as stack:
            try:
                daemon = _start(cfg, grant, clock, stack)
            except VolumedError as exc:
                failure = {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
            except Exception as exc:
                log.exception("mount failed")
                failure = {"ok": False, "error": f"mount failed: {keyservice.error_message(exc)}",
                           "exit_code": 1}
            else:
                served = True
                trio.run(daemon.run, lambda: ready({"ok": True, "file": daemon.file}))
    finally:
        if served:  # and torn down now, even if serving raised
            log.info("unmounted %s", cfg.mountpoint)
    if failure is not None:
        ready(failure)


def setup_logging() -> None:
    """The daemon logs to stderr (the run directory's <id>.log for background daemons)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s volumed-mount[%(process)d] %(levelname)s %(message)s")


def main() -> int:
    """Entry point of ``python -m volumed.mount.daemon`` (started by volumed.mount.client)."""
    setup_logging()
    cfg = MountConfig(**json.loads(sys.stdin.readline()))
    os.chdir("/")  # keep no file system busy
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    out = os.fdopen(os.dup(1), "w")
    result: ReadyLine = {}

    def ready(res: ReadyLine) -> None:
        result.update(res)
        out.write(json.dumps(res) + "\n")
        out.flush()
        out.close()
        os.dup2(devnull, 1)

    serve(cfg, ready)
    return 0 if result.get("ok") else int(result.get("exit_code", 1))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
