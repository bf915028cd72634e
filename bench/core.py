"""Volume core benchmark: 4 KiB read and write latency through the native core vs the reference.

Run by `scripts/bench core` (or `python -m bench.core`). One XTS volume (embedded key service in a
temporary directory), opened twice in turn: with the native core (volumed._native.VolumeCore) and
with the pure-Python reference core (volumed.volume.refcore). Interleaved rounds of --ops random
4 KiB reads and writes at sector-aligned offsets of a --size file that stays in the page cache (the
request path and the cipher, not the disk), on one thread. Per round: mean microseconds per call
through Volume.read/write (what the Python API pays) and, for the native core, straight on the
VolumeCore object (what the FUSE engine's C path pays plus one Python call), beside os.pread /
os.pwrite of a plain file of the same size (the syscall floor, measured in the same rounds). Every figure is the
median over --rounds; the ratio is the median of per-round ratios. Results on stdout and in --json
(default bench/results/core.json). No target: the bench reports the ratio in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

SS = 4096


def _round(fn, offsets, data) -> float:
    t0 = time.perf_counter()
    if data is None:
        for off in offsets:
            fn(off, SS)
    else:
        for off in offsets:
            fn(off, data)
    return (time.perf_counter() - t0) / len(offsets) * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench core", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64 << 20, help="volume bytes (stays cached)")
    p.add_argument("--ops", type=int, default=20000, help="calls per round and kind")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, default=Path("bench/results/core.json"))
    args = p.parse_args(argv)

    from volumed import kms as kmsmod
    from volumed.kms.principals import rds_via
    from volumed.volume import Volume
    from volumed.volume.keywrap import unwrap

    samples: dict[str, list[float]] = {k: [] for k in (
        "native_read", "native_write", "core_read", "core_write", "reference_read", "reference_write",
        "raw_read", "raw_write")}
    with tempfile.TemporaryDirectory(prefix="volumed-bench-core-") as tmp:
        kms = kmsmod.connect(os.path.join(tmp, "keystore"), via_service=rds_via("us-east-1"))
        path = os.path.join(tmp, "vol.xts")
        Volume.create(path, size=args.size, kms=kms)
        h = Volume.read_header(path)
        key = bytes(unwrap(kms, h.key_arn, h.wrapped_key, h.context))
        with Volume._open_with_key(path, bytearray(key)) as vol:
            vol.write(0, os.urandom(args.size))
            vol.flush()
        rng = random.Random(1)
        data = os.urandom(SS)
        raw = os.open(os.path.join(tmp, "raw"), os.O_RDWR | os.O_CREAT, 0o600)  # the syscall floor
        os.pwrite(raw, os.urandom(args.size), 0)
        for _ in range(args.rounds):
            offsets = [rng.randrange(args.size // SS) * SS for _ in range(args.ops)]
            samples["raw_read"].append(_round(lambda off, n: os.pread(raw, n, off), offsets, None))
            samples["raw_write"].append(_round(lambda off, d: os.pwrite(raw, d, off), offsets, data))
            for core in ("native", "reference"):
                with Volume._open_with_key(path, bytearray(key), core=core) as vol:
                    samples[f"{core}_read"].append(_round(vol.read, offsets, None))
                    samples[f"{core}_write"].append(_round(vol.write, offsets, data))
                    if core == "native":
                        c = vol.native_core
                        samples["core_read"].append(_round(c.read, offsets, None))
                        samples["core_write"].append(_round(c.write, offsets, data))
                        del c  # a live VolumeCore keeps its descriptor, and so the volume's lock
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {op: statistics.median(r / n for r, n in zip(samples[f"reference_{op}"], samples[f"native_{op}"]))
              for op in ("read", "write")}
    print(f"4 KiB calls, page cache, one thread, median of {args.rounds} rounds x {args.ops} calls (us per call):")
    print(f"{'':>6} {'os.pread/pwrite':>16} {'native core':>12} {'native Volume':>14} {'reference Volume':>17} "
          f"{'ref/native':>11}")
    for op in ("read", "write"):
        print(f"{op:>6} {med['raw_' + op]:>16.2f} {med['core_' + op]:>12.2f} {med['native_' + op]:>14.2f} "
              f"{med['reference_' + op]:>17.2f} {ratios[op]:>10.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"median_us": med, "reference_over_native": ratios,
                                     "samples_us": samples, "ops": args.ops, "rounds": args.rounds,
                                     "size": args.size}, indent=1))
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
