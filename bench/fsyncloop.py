"""4 KiB write + fsync loop through the volume API: what the durable nonce note costs GCM.

Run by `scripts/bench fsync` (or `python -m bench.fsyncloop` from the repository root). On one
sparse volume per variant, in a directory on the backing file system (--dir, default a temporary
directory under $TMPDIR), each round does --ops iterations of: write 4 KiB at a random aligned
offset, Volume.flush() (what an fsync on the mount does). Variants, interleaved round by round so
load from the shared machine hits them alike:

- ``gcm``: GCM format 2 as shipped: flush = fdatasync, then the nonce note as one RWF_DSYNC page
  write (docs/FORMAT.md);
- ``gcm-unsynced-note``: the same store with the note left unsynced (the old behaviour, whose
  acknowledged writes became doubtful after a power cut): the price of the durable note;
- ``xts``: XTS, whose flush is one fdatasync.

Prints operations per second (median over --rounds) and the ratios gcm / gcm-unsynced-note and
gcm / xts (medians of per-round ratios); --json writes every sample (default bench/results/fsync.json). Measures, never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time

from volumed.volume import gcmformat as F

PAGE = 4096


def _unsynced_note_flush(self) -> None:
    """GcmStore.flush with the note written but not synced (the behaviour before issue 13)."""
    self.backing.fdatasync()
    self._dirty.clear()
    last = self._next - 1
    if last > self.header.nonce_flushed:
        self.header.nonce_flushed = last
        self._note_seq += 1
        self.backing.pwrite(*F.encode_note(self.note_key, self._note_seq, last))
    self._punch_stale()


def _round(vol, ops: int, size: int, rng: random.Random) -> float:
    buf = os.urandom(PAGE)
    t = time.perf_counter()
    for _ in range(ops):
        vol.write(rng.randrange(size // PAGE) * PAGE, buf)
        vol.flush()
    return ops / (time.perf_counter() - t)


def main(argv=None) -> int:
    from volumed import kms as kmsmod
    from volumed.kms.principals import rds_via
    from volumed.volume import Volume
    from volumed.volume.gcmstore import GcmStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=64 << 20)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", default="bench/results/fsync.json")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        kms = kmsmod.connect(os.path.join(d, "keystore"), via_service=rds_via("us-east-1"))
        paths = {}
        for name, cipher in (("gcm", "gcm"), ("gcm-unsynced-note", "gcm"), ("xts", "xts")):
            paths[name] = os.path.join(d, name)
            Volume.create(paths[name], size=a.size, kms=kms, cipher=cipher)
        # GCM on the reference core: the unsynced-note variant patches GcmStore.flush, which the
        # native GCM store (the default core) does not run.
        vols = {n: Volume.open(p, kms=kms, core="reference" if n.startswith("gcm") else None)
                for n, p in paths.items()}
        shipped = GcmStore.flush
        samples: dict[str, list[float]] = {n: [] for n in vols}
        rng = random.Random(1)
        try:
            for _ in range(a.rounds):
                for name, vol in vols.items():
                    GcmStore.flush = _unsynced_note_flush if name == "gcm-unsynced-note" else shipped
                    samples[name].append(_round(vol, a.ops, a.size, rng))
        finally:
            GcmStore.flush = shipped
            for vol in vols.values():
                vol.close()
    med = {n: statistics.median(v) for n, v in samples.items()}
    for n, v in med.items():
        print(f"{n:20s} {v:10.0f} write+fsync/s")
    ratios = {f"gcm/{peer}": statistics.median(g / p for g, p in zip(samples["gcm"], samples[peer]))
              for peer in ("gcm-unsynced-note", "xts")}  # median of per-round ratios
    for n, r in ratios.items():
        print(f"{n:20s} {r:10.2f}x")
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"ops": a.ops, "rounds": a.rounds, "samples": samples, "median": med, "ratios": ratios,
                       "dir": a.dir or tempfile.gettempdir()}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
