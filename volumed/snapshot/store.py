"""Snapshot stores: named immutable-ish objects (bytes) with put/get/list/delete/exists.

``LocalStore(dir)`` keeps each object as a file under the directory (volumed.safefile.write_atomic:
a new temporary file that is never a planted link, then a rename, so a reader never sees half an
object). ``S3Store(bucket, prefix)`` keeps
objects in S3 through boto3 (``s3://bucket/prefix``). ``open_store(spec)`` picks one the way the
key service is picked: ``--store SPEC``, else ``$VOLUMED_SNAPSHOT_STORE``, else the directory
``snapshots`` next to the embedded keystore. Names are ``/``-separated relative paths.

Ordering: a manifest is written only after ``sync()`` made its chunks durable (catalog.save).
Stores do not check content: manifests and chunks carry their own SHA-256 (volumed.snapshot.objects).
``lock()`` serialises writers of one store (create/copy/share/delete of snapshots): a flock for a
local store; for S3 a lock object ``PREFIX/.lock`` created with a conditional put (If-None-Match:
*), holding its owner and a lease expiry, deleted on release; an expired lease is broken with a
conditional delete (If-Match: its ETag), so two breakers cannot both win (docs/SNAPSHOTS.md).
Callers: engine, restore, catalog, the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from volumed import kms
from volumed.clock import SYSTEM_CLOCK, Clock
from volumed.errors import StateError, UsageError, VolumedError, aws_error_code
from volumed.safefile import is_temp_name, write_atomic

ENV_STORE = "VOLUMED_SNAPSHOT_STORE"
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


def _check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name) or any(p in (".", "..") for p in name.split("/")):
        raise UsageError(f"invalid snapshot store object name {name!r}")
    return name


class Store(Protocol):
    """What the snapshot code uses of a store (LocalStore, S3Store): named objects and a writer lock.
    ``list`` is last: in a class body its name would shadow the builtin in later annotations."""

    spec: str

    def put(self, name: str, data: bytes) -> None: ...

    def get(self, name: str) -> bytes: ...

    def exists(self, name: str) -> bool: ...

    def delete(self, name: str) -> None: ...

    def sync(self) -> None: ...

    def lock(self) -> contextlib.AbstractContextManager[None]: ...

    def list(self, prefix: str = "") -> list[str]: ...


class ObjectMissing(VolumedError):
    """An object the caller asked for is not in the store."""

    code = "NotFound"


class LocalStore:
    """A snapshot store in a local directory (created on first write)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.spec = self.root

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *_check_name(name).split("/"))

    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` (replaces an existing object; readers see the old or the
        new object whole). Durable after the next ``sync()``."""
        path = self._path(name)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, data, durable=False)  # sync() makes the batch durable
        except OSError as exc:
            raise VolumedError(f"cannot write {name} to the snapshot store {self.root}: "
                               f"{exc.strerror}") from None

    def get(self, name: str) -> bytes:
        """The object's bytes; ObjectMissing if there is none."""
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectMissing(f"{name} is missing from the snapshot store {self.root}") from None
        except OSError as exc:
            raise VolumedError(f"cannot read {name} from the snapshot store {self.root}: "
                               f"{exc.strerror}") from None

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._path(name))

    def sync(self) -> None:
        """Make every object put so far durable: one syncfs(2) of the store's file system (an
        fsync per 64 KiB chunk would cost more than the snapshot itself)."""
        import ctypes

        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def list(self, prefix: str = "") -> list[str]:
        """Names of all objects whose name starts with ``prefix``, sorted."""
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            for fn in files:
                if is_temp_name(fn) or fn == ".lock":
                    continue
                name = fn if rel == "." else f"{rel.replace(os.sep, '/')}/{fn}"
                if name.startswith(prefix):
                    out.append(name)
        return sorted(out)

    def delete(self, name: str) -> None:
        """Remove the object (no error if it is already gone)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock on this store (flock on ``.lock``)."""
        import fcntl

        os.makedirs(self.root, exist_ok=True)
        fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class S3Store:
    """A snapshot store in an S3 bucket under a key prefix (boto3; endpoint from the environment).
    ``clock`` and ``sleep`` time the writer lock (tests inject them); ``lease`` is how long a lock
    object stands before another writer may break it (a writer that died holding it)."""

    LOCK_NAME = ".lock"
    LEASE = 6 * 3600.0       # longer than any snapshot copy; a crashed writer's lock expires then
    LOCK_WAIT = 15 * 60.0    # how long a writer waits for another's lock before giving up
    POLL = 0.5

    def __init__(self, bucket: str, prefix: str = "", client: Any = None, *, clock: Clock | None = None,
                 sleep: Callable[[float], None] = time.sleep, lease: float | None = None,
                 lock_wait: float | None = None) -> None:
        import boto3

        self.clock = clock or SYSTEM_CLOCK
        self.sleep = sleep
        self.lease = self.LEASE if lease is None else lease
        self.lock_wait = self.LOCK_WAIT if lock_wait is None else lock_wait
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.spec = f"s3://{bucket}/{self.prefix}"
        self.client = client or boto3.client("s3", endpoint_url=os.environ.get("VOLUMED_S3_ENDPOINT") or None)

    def _key(self, name: str) -> str:
        return self.prefix + _check_name(name)

    def _fail(self, what: str, name: str, exc: Exception) -> VolumedError:
        code = aws_error_code(exc)
        return VolumedError(f"cannot {what} {name} in the snapshot store {self.spec}: {code or exc}",
                            code=code or None)

    def put(self, name: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)
        except Exception as exc:
            raise self._fail("write", name, exc) from None

    def get(self, name: str) -> bytes:
        try:
            data: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
            return data
        except Exception as exc:
            code = aws_error_code(exc)
            if code in ("NoSuchKey", "404"):
                raise ObjectMissing(f"{name} is missing from the snapshot store {self.spec}") from None
            raise self._fail("read", name, exc) from None

    def exists(self, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(name))
            return True
        except Exception as exc:
            code = aws_error_code(exc)
            if code in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._fail("look up", name, exc) from None

    def list(self, prefix: str = "") -> list[str]:
        out = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix)
            for page in pages:
                out += [o["Key"][len(self.prefix):] for o in page.get("Contents", [])
                        if o["Key"] != self.prefix + self.LOCK_NAME]
        except Exception as exc:
            raise self._fail("list", prefix or "objects", exc) from None
        return sorted(out)

    def delete(self, name: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            raise self._fail("delete", name, exc) from None

    def sync(self) -> None:
        """S3 objects are durable when put returns."""

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock on this store: the object ``.lock`` under the prefix, created only
        if absent (If-None-Match: *). Waits (polling) while another writer holds an unexpired
        lease, up to ``lock_wait`` seconds, then StateError naming the holder; breaks an expired
        lease (conditional delete on its ETag). Released (deleted) on exit."""
        key = self.prefix + self.LOCK_NAME
        deadline = self.clock.time() + self.lock_wait
        while True:
            now = self.clock.time()
            body = json.dumps({"owner": f"{socket.gethostname()}:{os.getpid()}",
                               "expires": now + self.lease}).encode()
            try:
                etag = self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                              IfNoneMatch="*")["ETag"]
                break
            except Exception as exc:
                if aws_error_code(exc) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    raise self._fail("lock", self.LOCK_NAME, exc) from None
            holder = self._lock_holder(key)
            if holder is not None and holder[1] < now:
                self._break_lock(key, holder[2])
                continue
            if now >= deadline:
                who = holder[0] if holder else "another writer"
                raise StateError(f"the snapshot store {self.spec} is locked by {who} (another "
                                 "snapshot create, copy, share or delete): retry when it is done, "
                                 f"or delete {self.LOCK_NAME} under the prefix if that writer died")
            self.sleep(self.POLL)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # an expired-and-broken lease is not ours to delete
                self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)

    def _lock_holder(self, key: str) -> tuple[str, float, str] | None:
        """(owner, lease expiry, ETag) of the lock object, or None if it is gone (or unreadable,
        which is treated as held by an unknown writer until its lease passes: never)."""
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if aws_error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._fail("read", self.LOCK_NAME, exc) from None
        try:
            info = json.loads(obj["Body"].read())
            return str(info["owner"]), float(info["expires"]), obj["ETag"]
        except (ValueError, KeyError, TypeError):
            return "an unknown writer", float("inf"), obj["ETag"]

    def _break_lock(self, key: str, etag: str) -> None:
        """Delete an expired lock object, only if it is still the one seen (ETag)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
        except Exception as exc:
            if aws_error_code(exc) not in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                raise self._fail("unlock", self.LOCK_NAME, exc) from None


def default_spec() -> str:
    """$VOLUMED_SNAPSHOT_STORE, else ``snapshots`` inside the embedded keystore's directory (a
    key service that is AWS has no directory: then the store must be named)."""
    spec = os.environ.get(ENV_STORE)
    if spec:
        return spec
    ks = kms.default_spec()
    if ks == "aws" or ks.startswith(("http://", "https://")):
        raise UsageError("no snapshot store: with AWS KMS name one with --store s3://BUCKET/PREFIX "
                         f"or ${ENV_STORE}")
    return os.path.join(ks, "snapshots")


def open_store(spec: str | None = None, *, kms_spec: str | None = None) -> LocalStore | S3Store:
    """The store named by ``spec`` (a directory or ``s3://bucket/prefix``); None means the default.
    ``kms_spec`` (the CLI's --kms) places the default store next to that keystore."""
    if not spec:
        if kms_spec and not os.environ.get(ENV_STORE) and not (
                kms_spec == "aws" or kms_spec.startswith(("http://", "https://"))):
            spec = os.path.join(kms_spec, "snapshots")
        else:
            spec = default_spec()
    if spec.startswith("s3://"):
        rest = spec[5:]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UsageError(f"invalid snapshot store {spec!r}: expected s3://BUCKET[/PREFIX]")
        return S3Store(bucket, prefix)
    if os.path.exists(spec) and not os.path.isdir(spec):
        raise UsageError(f"snapshot store {spec} is a file, not a directory: choose a directory or s3://BUCKET/PREFIX")
    return LocalStore(spec)
