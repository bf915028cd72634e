"""In-process crash harness: trace a volume's backing writes and flushes, then rebuild the file as
a power cut at any point of the trace would leave it (random subsets of the writes after the last
flush, multi-page writes torn at 4 KiB), reopen it and check every sector.

Used by test_crash.py. A sector passes if it reads the version made durable by the last completed
flush or a version some later (or in-flight) operation wrote; never garbage, never an error.
"""

from __future__ import annotations

import hashlib
import os
import random

from volumed.volume import BackingFile, Volume

SS = 4096


class TracingBacking(BackingFile):
    """BackingFile recording ("w", offset, bytes) for writes and hole punches, ("s",) for syncs
    (a durable write is a write and a sync)."""

    def __init__(self, path, trace: list):
        super().__init__(path)
        self.trace = trace

    def pwrite(self, offset, data):
        self.trace.append(("w", offset, bytes(data)))
        super().pwrite(offset, data)

    def punch_hole(self, offset, length):
        self.trace.append(("w", offset, bytes(length)))
        super().punch_hole(offset, length)

    def fdatasync(self):
        self.trace.append(("s",))
        super().fdatasync()

    def pwrite_durable(self, offset, data):
        # Durable when it returns; called with nothing else pending (after a sync), so a write
        # followed by a sync is exact.
        self.trace.append(("w", offset, bytes(data)))
        self.trace.append(("s",))
        super().pwrite_durable(offset, data)


def _digests(buf: bytes) -> list[bytes]:
    return [hashlib.blake2b(buf[i:i + SS], digest_size=12).digest() for i in range(0, len(buf), SS)]


class Run:
    """One traced workload on a copy of ``base`` (file bytes); see module docstring."""

    def __init__(self, workdir: str, base: bytes, key: bytes, sectors: int, rng: random.Random,
                 ops: int = 40, durable: list[bytes] | None = None):
        self.workdir, self.base, self.key, self.n = workdir, base, key, sectors
        path = os.path.join(workdir, "traced")
        with open(path, "wb") as f:
            f.write(base)
        self.trace: list = []
        vol = Volume._open_with_key(path, bytearray(key), backing=TracingBacking(path, self.trace))
        size = vol.size
        model = bytearray(vol.read(0, size))
        if durable is not None:
            assert _digests(bytes(model)) == durable
        # ops: (start trace index, end trace index, sector digests after the op)
        self.ops: list[tuple[int, int, list[bytes]]] = [(0, len(self.trace), _digests(bytes(model)))]
        for _ in range(ops):
            start = len(self.trace)
            r = rng.random()
            if r < 0.15:
                vol.flush()
            elif r < 0.25:
                off = rng.randrange(size)
                ln = rng.randrange(1, min(size - off, 6 * SS) + 1)
                vol.discard(off, ln)
                model[off:off + ln] = bytes(ln)
            else:
                if rng.random() < 0.5:  # aligned, maybe multi-sector
                    first = rng.randrange(self.n)
                    cnt = rng.randrange(1, min(8, self.n - first) + 1)
                    off, ln = first * SS, cnt * SS
                else:
                    off = rng.randrange(size)
                    ln = rng.randrange(1, min(size - off, 3 * SS) + 1)
                data = bytes(ln) if rng.random() < 0.15 else rng.randbytes(ln)
                vol.write(off, data)
                model[off:off + ln] = data
            self.ops.append((start, len(self.trace), _digests(bytes(model))))
        # Leave the volume unflushed and unclosed: the process "dies" here.
        vol.abandon()

    def crash_state(self, k: int, rng: random.Random, torn: bool) -> tuple[bytearray, int]:
        """File bytes after a power cut at trace index k; also the index of the last sync < k."""
        syncs = [i for i in range(k) if self.trace[i][0] == "s"]
        f = syncs[-1] if syncs else -1
        img = bytearray(self.base)
        for i in range(k):
            ev = self.trace[i]
            if ev[0] != "w":
                continue
            _, off, data = ev
            if i < f:
                img[off:off + len(data)] = data
                continue
            if torn and len(data) > SS:
                for p in range(0, len(data), SS):
                    if rng.random() < 0.5:
                        img[off + p:off + p + SS] = data[p:p + SS]
            elif rng.random() < 0.5:
                img[off:off + len(data)] = data
        return img, f

    def allowed(self, k: int, f: int) -> list[set[bytes]]:
        """Per sector: the durable version at sync f plus every version of ops in flight after it."""
        durable = self.ops[0][2]
        for start, end, dig in self.ops:
            if end <= f:
                durable = dig
        sets = [{d} for d in durable]
        for start, end, dig in self.ops:
            if end > f and start < k:
                for s, d in enumerate(dig):
                    sets[s].add(d)
        return sets

    def check_point(self, k: int, rng: random.Random, torn: bool) -> tuple[bytes, list[bytes]]:
        """Crash at k, reopen, check every sector; return (file bytes after reopen+close, digests)."""
        img, f = self.crash_state(k, rng, torn)
        path = os.path.join(self.workdir, "crashed")
        with open(path, "wb") as fh:
            fh.write(img)
        allowed = self.allowed(k, f)
        vol = Volume._open_with_key(path, bytearray(self.key))
        data = vol.read(0, vol.size)
        got = _digests(data)
        for s, d in enumerate(got):
            assert d in allowed[s], f"sector {s} reads neither its durable version nor a later one (k={k})"
        vol.abandon()  # crash again right after recovery: no clean close
        with open(path, "rb") as fh:
            return fh.read(), got
