"""What the CLI does for mounts: attach and start a daemon, unmount, list status, clean up stale
mounts. Callers: volumed.cli.mount_cmd (and so the mount helper), tests.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from typing import IO, Any, TextIO

import boto3

from volumed.clock import SYSTEM_CLOCK, FakeClock
from volumed.errors import StateError, UsageError, VolumedError, aws_error_code
from volumed.kms.principals import rds_via
from volumed.kms.server.remote import caller_arn
from volumed.mount import attach, daemon, keyservice, paths
from volumed.mount.control import ControlClient
from volumed.mount.protocol import StatusRecord
from volumed.mount.daemon import MountConfig, ReadyLine
from volumed.mount.keyservice import KmsClient
from volumed.mount.latch import TERMINAL, VolumeRecord
from volumed.snapshot import latest_snapshot_hint
from volumed.volume.device import Volume
from volumed.volume.header import VolumeHeader

READY_TIMEOUT = 60.0
UNMOUNT_TIMEOUT = 30.0


def _lazy_unmount(mountpoint: str) -> None:
    """``fusermount3 -uz``: detach the mount now, whatever still uses it."""
    subprocess.run(["fusermount3", "-uz", mountpoint], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _is_dead_mount(mountpoint: str) -> bool:
    """True when ``mountpoint`` answers "Transport endpoint is not connected" (its daemon died)."""
    try:
        os.stat(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def volumed_mounts() -> set[str]:
    """Mount points of fuse.volumed file systems in this mount namespace (from mountinfo, without
    touching the mount points themselves)."""
    found = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "fuse.volumed":
                found.add(left.split(" ")[4].replace("\\040", " "))
    return found


def clean_stale_mountpoint(mountpoint: str) -> None:
    """Make ``mountpoint`` usable: a FUSE mount whose daemon died ("Transport endpoint is not
    connected") is lazily unmounted; a live mount is refused."""
    if _is_dead_mount(mountpoint):
        _lazy_unmount(mountpoint)
    try:
        os.stat(mountpoint)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise UsageError(f"mount point {mountpoint} does not exist; create the directory first") from None
        raise UsageError(f"cannot use mount point {mountpoint}: {exc.strerror}") from None
    if not os.path.isdir(mountpoint):
        raise UsageError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise StateError(f"{mountpoint} is already a mount point; unmount it first")


def check_record(header_uuid: str, volume: str, *, now: float, window: float,
                 header: VolumeHeader | None = None, kms_spec: str | None = None) -> VolumeRecord:
    """Refuse a volume whose persisted state is terminal or whose recovery window has passed
    (recording it terminal). Returns the record otherwise. With ``header`` the refusal names the
    volume's latest snapshot and the restore command (looked up in the store next to ``kms_spec``
    or $VOLUMED_SNAPSHOT_STORE), as the only way back from the terminal state."""
    path = paths.volume_state_path(header_uuid)
    rec = VolumeRecord.load(path)
    if rec.state != TERMINAL and rec.expired(now, window):
        rec.state, rec.reason = TERMINAL, f"recovery window passed ({rec.reason})"
        rec.save(path)
    if rec.state == TERMINAL:
        hint = None
        if header is not None:
            hint = latest_snapshot_hint(header, kms_spec=kms_spec)
        raise StateError(
            f"{volume} is {TERMINAL}: {rec.reason}; its data cannot be recovered from this volume, "
            "restore from a backup instead: "
            + (hint if hint else "volumed restore SNAPSHOT NEW_VOLUME (no snapshot of this volume "
               "was found in the snapshot store)"))
    return rec


def mount(*, volume: str, mountpoint: str, kms_spec: str, principal: str | None,
          via_service: str | None, foreground: bool = False, allow_faults: bool = False,
          recovery_window: float, grace: float, interval: float | None,
          fake_time: float | None = None, recording_journal: str | None = None,
          host_profile: str | None = None, engine: str | None = None,
          io_threads: int | None = None, io_depth: int | None = None,
          out: TextIO = sys.stdout) -> int:
    """``volumed mount``: check the record, attach (grant to the host), start the daemon, wait
    until it serves, print the file's path. Raises VolumedError with one line on failure."""
    if (fake_time is not None or recording_journal) and not allow_faults:
        raise UsageError("test options need --allow-faults")
    if io_threads is not None and not 1 <= io_threads <= 64:
        raise UsageError(f"--io-threads {io_threads} out of range: 1 to 64")
    if io_depth is not None and not 1 <= io_depth <= 64:
        raise UsageError(f"--io-depth {io_depth} out of range: 1 to 64")
    if io_depth is not None and io_threads is not None and io_depth < io_threads:
        raise UsageError(f"--io-depth {io_depth} is below --io-threads {io_threads}: the depth "
                         "counts every worker thread, so give at least as many")
    if not os.path.exists(volume):
        raise UsageError(f"volume {volume} does not exist")
    header = Volume.read_header(volume)
    uuid, key_arn = header.uuid, header.key_arn
    clock = FakeClock(fake_time) if fake_time is not None else SYSTEM_CLOCK
    record = check_record(uuid, volume, now=clock.time(), window=recovery_window,
                          header=header, kms_spec=kms_spec)
    clean_stale_runtime()
    clean_stale_mountpoint(mountpoint)
    region = keyservice.key_arn(key_arn).region
    user = keyservice.connect(kms_spec, principal=principal, via_service=via_service or rds_via(region))
    # Through a key server (volumed kms serve) the grantee is whoever the host's access key is.
    grantee = _remote_host_principal(kms_spec, host_profile, user)
    try:
        grant = attach.create_grant(user, key_arn=key_arn, context=dict(header.context),
                                    volume_uuid=uuid, volume_name=volume, grantee=grantee,
                                    hostname=grantee.rsplit("/", 1)[-1] if grantee else None)
    except VolumedError as exc:
        # A revoked volume whose key is now gone is terminal. (A key not found for a volume never
        # revoked is only reported: a wrong --kms gives the same answer.)
        if exc.code == "NotFoundException" and record.revoked_at is not None:
            VolumeRecord(TERMINAL, record.revoked_at, "key deleted", key_arn).save(
                paths.volume_state_path(uuid))
        raise
    kms_spec = str(kms_spec)
    if kms_spec != "aws" and not kms_spec.startswith(("http://", "https://")):
        kms_spec = os.path.abspath(kms_spec)  # the daemon runs from /
    cfg = MountConfig(volume=os.path.realpath(volume), mountpoint=paths.real_mountpoint(mountpoint),
                      kms=kms_spec, grant=grant.to_json(), allow_faults=allow_faults,
                      recovery_window=recovery_window, grace=grace, interval=interval,
                      fake_time=fake_time, recording_journal=recording_journal,
                      host_profile=host_profile, engine=engine, io_threads=io_threads,
                      io_depth=io_depth)
    if foreground:
        return _foreground(cfg, out)
    return _background(cfg, out)


def _remote_host_principal(kms_spec: str, host_profile: str | None, user: KmsClient) -> str | None:
    """The principal of the host's credentials (AWS profile ``host_profile``) as a ``volumed kms
    serve`` endpoint knows it (STS GetCallerIdentity there); None for other key services."""
    # Only a volumed key server answers its change counter (not AWS, moto, or nothing at all,
    # whose failure create_grant reports as before).
    if not str(kms_spec).startswith(("http://", "https://")) or keyservice.change_counter(user) is None:
        return None
    try:
        return caller_arn(boto3.Session(profile_name=host_profile), str(kms_spec), user.meta.region_name)
    except Exception as exc:
        raise VolumedError(f"cannot learn the host's principal from {kms_spec}: "
                           f"{keyservice.error_message(exc)}; check --host-profile and its access key",
                           code=aws_error_code(exc) or "KMSUnreachable") from None


def _foreground(cfg: MountConfig, out: TextIO) -> int:
    """Serve in this process (``--foreground``); returns when unmounted."""
    daemon.setup_logging()
    result: ReadyLine = {}

    def ready(res: ReadyLine) -> None:
        result.update(res)
        if res.get("ok"):
            print(res["file"], file=out, flush=True)

    daemon.serve(cfg, ready)
    if not result.get("ok"):
        raise VolumedError(result.get("error", "mount failed"))
    return 0


def _background(cfg: MountConfig, out: TextIO) -> int:
    """Start the daemon in its own session, hand it the configuration on stdin, and wait for its
    readiness line on stdout (the daemon's log goes to the run directory)."""
    mid = paths.mount_id(cfg.mountpoint)
    log = open(paths.log_path(mid), "ab")
    proc = subprocess.Popen([sys.executable, "-m", "volumed.mount.daemon"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                            close_fds=True)
    log.close()
    assert proc.stdin is not None and proc.stdout is not None  # both are pipes
    proc.stdin.write(json.dumps(dataclasses.asdict(cfg)).encode() + b"\n")
    proc.stdin.close()
    line = _read_line(proc.stdout, READY_TIMEOUT)
    proc.stdout.close()
    if not line:
        proc.kill() if proc.poll() is None else None
        raise VolumedError(f"the mount daemon exited before the mount was ready; see {paths.log_path(mid)}")
    res = json.loads(line)
    if not res.get("ok"):
        proc.wait(timeout=30)
        err = VolumedError(res.get("error", "mount failed"))
        err.exit_code = int(res.get("exit_code", 1))
        raise err
    print(res["file"], file=out, flush=True)
    return 0


def _read_line(stdout: IO[bytes], timeout: float) -> bytes:
    """One line from the daemon's stdout, or b"" on EOF or timeout."""
    sel = selectors.DefaultSelector()
    sel.register(stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            return b""
        chunk = os.read(stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
    return buf


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (a killed daemon's leader thread can
    linger as a zombie while its other threads exit)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


_pid_alive = pid_alive  # the name tests/mount use


def stop_process(pid: int | None, *, grace: float = 0.0, timeout: float = 10.0) -> bool:
    """Stop process ``pid`` and wait until it is gone (a zombie counts as gone): SIGTERM first and
    up to ``grace`` seconds to exit when ``grace`` > 0, then SIGKILL and up to ``timeout`` seconds.
    Returns True once it is gone. A process that exits (or is reaped) meanwhile is no error.
    Callers: the pytest plugin's kill and teardown, the mount tests' fixtures."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, timeout)):
        if pid is None or not pid_alive(pid):
            return True
        if wait <= 0:
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    return not pid_alive(pid or 0)


def mounts() -> list[dict[str, Any]]:
    """Run records of every mount on this host (stale ones removed)."""
    clean_stale_runtime()
    out = []
    for rec in sorted(paths.run_dir().glob("*.json")):
        try:
            out.append(dict(json.loads(rec.read_text()), id=rec.stem))
        except (OSError, ValueError):
            continue
    return out


def clean_stale_runtime() -> None:
    """Remove run-time files of daemons that died, and lazily unmount their dead mount points."""
    for rec in paths.run_dir().glob("*.json"):
        try:
            data = json.loads(rec.read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(int(data.get("pid", 0))):
            continue
        mp = data.get("mountpoint")
        if mp and mp in volumed_mounts():
            _lazy_unmount(mp)  # its daemon is gone: whatever the kernel still holds is dead
        paths.socket_path(rec.stem).unlink(missing_ok=True)
        rec.unlink(missing_ok=True)


def status_all() -> list[StatusRecord]:
    """The status of every mount on this host (``volumed status``)."""
    result = []
    for rec in mounts():
        try:
            result.append(ControlClient(paths.socket_path(rec["id"])).status())
        except (OSError, ValueError, VolumedError) as exc:
            result.append({"mountpoint": rec.get("mountpoint"), "volume": rec.get("volume"),
                           "file": rec.get("file"), "pid": rec.get("pid"),
                           "state": "daemon-not-answering", "reason": str(exc)})
    return result


def channel(mountpoint: str, *, timeout: float = 10.0) -> ControlClient:
    """The control channel of the daemon serving ``mountpoint``; UsageError if none does."""
    if not paths.record_path(paths.mount_id(mountpoint)).exists():
        raise UsageError(f"{mountpoint} is not a volumed mount on this host (see volumed status)")
    return ControlClient.for_mountpoint(mountpoint, timeout=timeout)


def loop_devices_on(mountpoint: str) -> list[str]:
    """Loop devices whose backing file lies under ``mountpoint`` (from /sys, without touching the
    mount)."""
    prefix = paths.real_mountpoint(mountpoint).rstrip("/") + "/"
    found = []
    for bf in sorted(glob.glob("/sys/block/loop*/loop/backing_file")):
        try:
            with open(bf) as f:
                target = f.read().strip()
        except OSError:
            continue
        if target.startswith(prefix):
            found.append("/dev/" + bf.split("/")[3])
    return found


def unmount(mountpoint: str, *, timeout: float = UNMOUNT_TIMEOUT, force: bool = False) -> None:
    """``volumed unmount``: ask the daemon to flush, retire the grant, wipe the key and exit; wait
    for it. A mount whose daemon died is cleaned up instead. Refused while a loop device is attached
    to the file (a file system on it may hold unwritten data) unless ``force``."""
    busy = loop_devices_on(mountpoint)
    if busy and not force:
        raise StateError(f"{mountpoint} is in use by {', '.join(busy)}: unmount the file system on it "
                         f"and detach it (losetup -d) first, or use --force")
    mid = paths.mount_id(mountpoint)
    rec_path = paths.record_path(mid)
    try:
        pid = int(json.loads(rec_path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        pid = None
    if pid is None or not pid_alive(pid):
        clean_stale_runtime()
        if _is_dead_mount(mountpoint):
            _lazy_unmount(mountpoint)
            return
        raise UsageError(f"{mountpoint} is not a volumed mount on this host (see volumed status)")
    try:
        ControlClient(paths.socket_path(mid)).unmount()
    except (OSError, ValueError, VolumedError):  # not answering: the signal does the same
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise StateError(f"the daemon (pid {pid}) did not exit within {timeout:.0f}s; "
                             f"see {paths.log_path(mid)}")
        time.sleep(0.05)
