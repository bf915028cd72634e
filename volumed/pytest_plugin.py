"""pytest plugin: encrypted volumes as fixtures (registered through the ``pytest11`` entry point).

Fixtures (see docs/TESTING.md and README "Testing your database on volumed"):
  volumed_kms               a temporary embedded keystore with a customer managed key
  encrypted_volume_factory  make(cipher=, size=, volume_type=, iops=, throughput_mib=, key_arn=, engine=)
                            -> EncryptedVolume
  encrypted_volume          one mounted volume, configured by ``@pytest.mark.volumed(...)``
  encrypted_fs              ext4 on a loop device over ``encrypted_volume``, mounted at a private
                            ``/tmp/volumed-fs-*`` (0755); ``.path`` is an empty directory on it
                            for a database's data

Every mount is served by a separate daemon started with ``--allow-faults`` (faults only through its
root-only control channel) and is torn down even when the test failed or the daemon died: the file
system and loop device first, then ``volumed unmount --force``, then SIGKILL and ``fusermount3 -uz``.
All state lives under pytest's per-test temporary directories (state dir, keystore, mount points)
and a private ``/tmp/volumed-run-*`` run directory (the control socket's path must stay short),
so pytest-xdist workers share nothing. Without root or /dev/fuse the fixtures skip with the reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypedDict, Unpack

import pytest

from volumed.kms.principals import rds_via
from volumed.errors import VolumedError
from volumed.mount import client, keyservice, paths
from volumed.mount.control import ControlClient
from volumed.mount.keyservice import KmsClient
from volumed.mount.protocol import Fault, ReplyT, RequestOf, Status, StatusRecord, Wire, encode_reply
from volumed.volume.device import Volume, parse_size

CLI_TIMEOUT = 60
REVOKE_HOW = ("disable", "schedule-deletion", "revoke-grant", "deny-policy")
RECOVERABLE = "inaccessible-encryption-credentials-recoverable"

StrPath = str | os.PathLike[str]
Report = dict[str, Any]  # a fault reply's JSON object (a power cut's report, the fault state)


class VolumeOptions(TypedDict, total=False):
    """The keywords of ``encrypted_volume_factory``'s make() and of ``@pytest.mark.volumed``."""

    cipher: str
    size: str | int
    key_arn: str | None
    volume_type: str | None
    iops: int | None
    throughput_mib: float | None
    engine: str | None


class ThrottleArgs(TypedDict):
    """A volume type's throttle as the "throttle" fault takes it."""

    volume_type: str
    iops: int | None
    throughput_mib: float | None


class MakeVolume(Protocol):
    """``encrypted_volume_factory``: a mounted EncryptedVolume made with ``options``."""

    def __call__(self, **options: Unpack[VolumeOptions]) -> EncryptedVolume: ...


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "volumed(cipher='xts', size='64M', volume_type=None, iops=None, throughput_mib=None, "
        "engine=None): how the encrypted_volume / encrypted_fs fixtures create, throttle and serve "
        "the volume (engine: native or python; default: the daemon's choice)")


def skip_reason() -> str | None:
    """Why volumed fixtures cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "volumed fixtures need root (FUSE mounts with allow_other, loop devices, mount)"
    if not os.path.exists("/dev/fuse"):
        return "volumed fixtures need /dev/fuse"
    return None


def _run(cmd: Sequence[StrPath], *, env: Mapping[str, str] | None = None, timeout: float = CLI_TIMEOUT,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} -> exit {p.returncode}: {p.stderr.strip()}")
    return p


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    return client.pid_alive(pid)


class VolumedKMS:
    """A temporary embedded keystore (``spec``, a directory) with a customer managed key (``key_arn``)."""

    def __init__(self, spec: Path) -> None:
        self.spec = str(spec)
        self.admin = self.client()
        self.key_arn = self.admin.create_key(Description="volumed pytest key")["KeyMetadata"]["Arn"]

    def client(self, principal: str | None = None, via_service: str | None = None) -> KmsClient:
        """A key-service client as ``principal`` (default: the keystore's administrator)."""
        return keyservice.connect(self.spec, principal=principal, via_service=via_service)

    def create_key(self, description: str = "volumed pytest key") -> str:
        arn: str = self.admin.create_key(Description=description)["KeyMetadata"]["Arn"]
        return arn


class Faults:
    """Fault injection on a mounted volume (the "fault" control op; see volumed.mount.faults).
    Offsets are the decrypted file's; sectors are 4 KiB."""

    def __init__(self, vol: EncryptedVolume) -> None:
        self.vol = vol

    def _send(self, kind: str, **kw: object) -> Wire:
        """The daemon's reply as JSON ({"ok": true, ...})."""
        return encode_reply(self.vol.call(Fault(kind, kw)))

    def error(self, *, io: str = "any", errno: str | int = "EIO", start: int | None = None,
              end: int | None = None, nth: int | None = None, probability: float | None = None,
              count: int | None = None, seed: int | None = None) -> Wire:
        """Fail matching reads/writes/flushes with ``errno`` (range, Nth op, probability)."""
        return self._send("error", io=io, errno=errno, start=start, end=end, nth=nth,
                          probability=probability, count=count, seed=seed)

    def bad_sectors(self, *sectors: int) -> Wire:
        """Reads touching these sectors fail with EIO until a write rewrites the whole sector."""
        return self._send("bad-sector", sectors=list(sectors))

    def latency(self, seconds: float) -> Wire:
        return self._send("latency", seconds=seconds)

    def throttle(self, volume_type: str = "gp3", *, iops: int | None = None,
                 throughput_mib: float | None = None) -> Wire:
        return self._send("throttle", volume_type=volume_type, iops=iops, throughput_mib=throughput_mib)

    def rollback(self, *sectors: int) -> int:
        """Put the previous on-disk version of these sectors back; returns pages rolled back."""
        return self.vol.call(Fault("rollback", {"sectors": list(sectors)})).pages or 0

    def clear(self) -> Wire:
        return self._send("clear")

    def status(self) -> Report:
        return self.vol.call(Fault("status")).faults or {}


class EncryptedVolume:
    """A volume mounted by a background daemon. ``path`` is the decrypted file."""

    def __init__(self, root: Path, kms: VolumedKMS, *, cipher: str = "xts", size: str | int = "64M",
                 key_arn: str | None = None, volume_type: str | None = None, iops: int | None = None,
                 throughput_mib: float | None = None, engine: str | None = None) -> None:
        self.root, self.kms = root, kms
        self.image = root / "volume.img"
        self.mountpoint = root / "mnt"
        self.mountpoint.mkdir()
        self.key_arn = key_arn or kms.key_arn
        user = kms.client()
        user = user.with_identity(via_service=rds_via(user.region()))
        Volume.create(self.image, size=parse_size(str(size)), kms=user, key_id=self.key_arn, cipher=cipher)
        # The run dir holds the control socket, whose path must fit in sun_path (108 bytes): a short
        # private directory of its own rather than one under a deep tmp_path.
        self.run_dir = tempfile.mkdtemp(prefix="volumed-run-")
        self.env = dict(os.environ, VOLUMED_RUN_DIR=self.run_dir, VOLUMED_STATE_DIR=str(root / "state"),
                        VOLUMED_KMS=kms.spec, PYTHONWARNINGS="ignore")
        self.throttle_args = None if volume_type is None else ThrottleArgs(
            volume_type=volume_type, iops=iops, throughput_mib=throughput_mib)
        self.fault = Faults(self)
        self.engine = engine  # None: the daemon's default (native for XTS, python for GCM)
        self.path: str | None = None
        self.pids: list[int] = []
        self._undo: Callable[[], object] | None = None

    # ---- mount lifecycle ----------------------------------------------------------------------

    def cli(self, *args: StrPath, check: bool = True,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``volumed ARGS`` in this volume's environment (its own run, state and keystore)."""
        return _run([sys.executable, "-m", "volumed", *args], env=self.env, check=check, timeout=timeout)

    def mount(self) -> str:
        """Mount (with --allow-faults), apply the volume type's throttle; returns ``path``."""
        engine = ["--engine", self.engine] if self.engine else []
        p = self.cli("mount", self.image, self.mountpoint, "--allow-faults", *engine, check=False)
        if p.returncode != 0:
            logs = "".join(Path(f).read_text(errors="replace")[-2000:]
                           for f in sorted(Path(self.run_dir).glob("*.log")))
            raise RuntimeError(f"volumed mount {self.image} failed: {p.stderr.strip()}\n{logs}")
        self.path = p.stdout.strip()
        pid = self.pid()
        if pid:
            self.pids.append(pid)
        if self.throttle_args:
            self.fault.throttle(**self.throttle_args)
        return self.path

    def unmount(self, *, force: bool = True) -> None:
        """``volumed unmount`` (with --force: a file system above must be unmounted first)."""
        self.cli("unmount", self.mountpoint, *(["--force"] if force else []))

    def remount(self) -> str:
        """Unmount and mount again (the daemon re-attaches: a new grant, the key unwrapped again)."""
        self.unmount()
        return self.mount()

    def _mounted_path(self) -> str:
        """``path``, which the first mount() sets; RuntimeError before it."""
        if self.path is None:
            raise RuntimeError(f"volume {self.image} was never mounted: call mount() first")
        return self.path

    def _sock(self) -> Path:
        return Path(self.env["VOLUMED_RUN_DIR"]) / f"{paths.mount_id(self.mountpoint)}.sock"

    @property
    def channel(self) -> ControlClient:
        """The daemon's control channel (volumed.mount.control.ControlClient)."""
        return ControlClient(self._sock())

    def call(self, req: RequestOf[ReplyT]) -> ReplyT:
        """One typed control-channel request (volumed.mount.protocol); raises RuntimeError with
        the daemon's error line."""
        try:
            return self.channel.call(req)
        except VolumedError as exc:
            kind = getattr(req, "kind", "")
            raise RuntimeError(f"volumed {req.op} {kind}: {exc}") from None

    def control(self, msg: Wire) -> Wire:
        """One control-channel request in its JSON form ({"op": ...}), answered in JSON; raises
        RuntimeError with the daemon's error line."""
        try:
            return self.channel.call_wire(msg)
        except VolumedError as exc:
            raise RuntimeError(f"volumed {msg.get('op')} {msg.get('kind', '')}: {exc}") from None

    def status(self) -> StatusRecord:
        return self.call(Status()).status

    def pid(self) -> int | None:
        """The serving daemon's pid (from its run record), or None."""
        rec = Path(self.env["VOLUMED_RUN_DIR"]) / f"{paths.mount_id(self.mountpoint)}.json"
        try:
            return int(json.loads(rec.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def wait_state(self, state: str, timeout: float = 5.0) -> StatusRecord:
        """Wait until the daemon reports ``state``; returns the status (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            # An inaccessible state counts once the cut is complete (key wiped, cached pages dropped).
            if st["state"] == state and (st.get("cut_off", True) or not state.startswith("inacc")):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"state {st['state']!r} ({st.get('reason')}), wanted {state!r}")
            time.sleep(0.02)

    # ---- key access ---------------------------------------------------------------------------

    def revoke(self, how: str = "disable", *, wait: bool = True) -> None:
        """Cut the mount off the key, one of REVOKE_HOW; with ``wait`` until the daemon noticed."""
        admin, key = self.kms.admin, self.key_arn
        if how == "disable":
            admin.disable_key(KeyId=key)
            self._undo = lambda: admin.enable_key(KeyId=key)
        elif how == "schedule-deletion":
            admin.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
            self._undo = lambda: (admin.cancel_key_deletion(KeyId=key), admin.enable_key(KeyId=key))
        elif how == "revoke-grant":
            admin.revoke_grant(KeyId=key, GrantId=self.status()["grant_id"])
            self._undo = lambda: None   # the remount creates a new grant
        elif how == "deny-policy":
            host = self.status()["host_principal"]
            old = admin.get_key_policy(KeyId=key, PolicyName="default")["Policy"]
            policy = json.loads(old)
            policy["Statement"] = list(policy["Statement"]) + [
                {"Sid": "volumed-pytest-deny", "Effect": "Deny", "Principal": {"AWS": host},
                 "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*"}]
            admin.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
            self._undo = lambda: admin.put_key_policy(KeyId=key, PolicyName="default", Policy=old)
        else:
            raise ValueError(f"unknown revocation {how!r}: use one of {', '.join(REVOKE_HOW)}")
        if wait:
            self.wait_state(RECOVERABLE)

    def restore(self, *, remount: bool = True) -> None:
        """Undo the last ``revoke`` in the key service; with ``remount`` mount again (as RDS
        recovers: the new attach is the re-check)."""
        if self._undo is not None:
            self._undo()
            self._undo = None
        if remount:
            self.remount()

    # ---- power loss and teardown ----------------------------------------------------------------

    def power_cut(self, mode: str = "all", seed: int | None = None, *, remount: bool = True) -> Report:
        """Lose power: writes not yet flushed are dropped (``mode`` all/random/torn); then, with
        ``remount``, unmount and mount again. Returns the report (writes, dropped, torn, pages_dropped).

        First the kernel's dirty pages of the file are written back to the daemon without a flush
        (sync_file_range), as a host's writeback would have sent them: the disk received them, but
        they are not durable, so the crash model decides their fate. Dirty pages the kernel still
        holds after that (written in the meantime) are lost with the power."""
        _write_back(self._mounted_path())
        report = self.call(Fault("power-cut", {"mode": mode, "seed": seed})).report or {}
        if remount:
            self.remount()
        return report

    def kill_daemon(self) -> None:
        """SIGKILL the serving daemon (what a crash looks like to everything above)."""
        client.stop_process(self.pid())

    def teardown(self) -> None:
        """Best effort, each step independent: unmount, kill what is left, detach dead mounts."""
        for dev in client.loop_devices_on(str(self.mountpoint)):
            _run(["losetup", "-d", dev], check=False)
        if _pid_alive(self.pid()):
            with contextlib.suppress(Exception):
                self.cli("unmount", self.mountpoint, "--force", check=False, timeout=30)
        for pid in self.pids:
            client.stop_process(pid)
        _run(["fusermount3", "-uz", self.mountpoint], check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _mounted_at(path: StrPath) -> bool:
    """True while something is mounted at ``path`` (from mountinfo, without touching it)."""
    target = str(path).replace(" ", "\\040")
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ", 5)[4] == target for line in f)


def _write_back(path: StrPath) -> None:
    """sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER) over the whole file: write dirty pages back
    without asking for durability (no FSYNC reaches the daemon)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fd = os.open(path, os.O_RDWR)
    try:
        if libc.sync_file_range(fd, 0, 0, 1 | 2 | 4) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sync_file_range {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


class EncryptedFS:
    """ext4 on a loop device over an EncryptedVolume's file. ``path``: an empty directory on it."""

    def __init__(self, volume: EncryptedVolume) -> None:
        self.volume = volume
        # Its own short directory outside pytest's root-only tmp tree, so a database server running
        # as another user (PostgreSQL as postgres) can reach its data directory.
        self.root = Path(tempfile.mkdtemp(prefix="volumed-fs-"))
        os.chmod(self.root, 0o755)
        self.path = self.root / "data"
        self.dev: str | None = None
        try:
            _run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", volume._mounted_path()])
            self.mount()
            self.path.mkdir()
        except BaseException:
            self.teardown()
            raise

    def mount(self) -> None:
        """Attach a loop device (``losetup -f --show``) and mount the ext4 on it."""
        self.dev = _run(["losetup", "-f", "--show", self.volume._mounted_path()]).stdout.strip()
        _run(["mount", "-t", "ext4", self.dev, self.root])

    def unmount(self) -> None:
        """Unmount the ext4 (lazily if it will not go) and detach the loop device."""
        # Not os.path.ismount: it answers False when stat fails, as it may on a file system
        # whose disk is gone.
        for _ in range(3):
            if not _mounted_at(self.root):
                break
            p = _run(["umount", self.root], check=False, timeout=60)
            if p.returncode != 0:
                print(f"umount {self.root}: {p.stderr.strip()}; detaching it lazily", file=sys.stderr)
                _run(["umount", "-l", self.root], check=False)
        if self.dev:
            _run(["losetup", "-d", self.dev], check=False)
            self.dev = None

    def remount(self) -> None:
        """Unmount the ext4, remount the volume, mount the ext4 again."""
        self.unmount()
        self.volume.remount()
        self.mount()

    def revoke(self, how: str = "disable", *, wait: bool = True) -> None:
        self.volume.revoke(how, wait=wait)

    def restore(self) -> None:
        """Undo the revocation, then unmount everything and mount it again."""
        self.unmount()
        self.volume.restore(remount=True)
        self.mount()

    def power_cut(self, mode: str = "all", seed: int | None = None) -> Report:
        """Lose power under the file system, then bring it back (ext4 replays its journal)."""
        report = self.volume.power_cut(mode, seed, remount=False)
        self.unmount()
        self.volume.remount()
        self.mount()
        return report

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.unmount()
        with contextlib.suppress(OSError):
            if not _mounted_at(self.root):
                os.rmdir(self.root)   # never rmtree: a file system still attached would be emptied


def _marker_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("volumed")
    return dict(marker.kwargs) if marker else {}


@pytest.fixture
def volumed_kms(tmp_path_factory: pytest.TempPathFactory) -> VolumedKMS:
    """A temporary embedded keystore with a customer managed key."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    return VolumedKMS(tmp_path_factory.mktemp("volumed-kms") / "keystore")


@pytest.fixture
def encrypted_volume_factory(volumed_kms: VolumedKMS,
                             tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeVolume]:
    """make(cipher="xts", size="64M", volume_type=None, iops=None, throughput_mib=None, key_arn=None,
    engine=None)
    -> a mounted EncryptedVolume; all torn down after the test."""
    made: list[EncryptedVolume] = []

    def make(**options: Unpack[VolumeOptions]) -> EncryptedVolume:
        vol = EncryptedVolume(tmp_path_factory.mktemp("volumed"), volumed_kms, **options)
        made.append(vol)
        vol.mount()
        return vol

    yield make
    for vol in reversed(made):
        vol.teardown()


@pytest.fixture
def encrypted_volume(encrypted_volume_factory: MakeVolume, request: pytest.FixtureRequest) -> EncryptedVolume:
    """A mounted volume as ``@pytest.mark.volumed(...)`` says (default: XTS, 64 MiB, no throttle)."""
    return encrypted_volume_factory(**_marker_options(request))


@pytest.fixture
def encrypted_fs(encrypted_volume: EncryptedVolume) -> Iterator[EncryptedFS]:
    """ext4 on a loop device over ``encrypted_volume``; ``.path`` is an empty directory on it."""
    fs = EncryptedFS(encrypted_volume)
    yield fs
    fs.teardown()
