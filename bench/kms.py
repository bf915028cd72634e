"""Key server benchmark: ``volumed kms serve`` against moto's server mode, in the same run.

Run by ``scripts/bench kms`` (or ``python -m bench.kms``). Both servers run as their own processes
on 127.0.0.1: volumed with TLS (its default: self-signed certificate, SigV4 verified, every call
authorized by key policy + identity policy and written to the chained audit log with a group
commit before it is answered, rate limits on); moto with plain HTTP (``moto_server``, its usual
test set-up: no authentication, no audit). For each operation (Decrypt of a data key's ciphertext,
GenerateDataKeyWithoutPlaintext) and each concurrency (1 and 16 clients, each a separate process
with its own boto3 client, so client CPU is not one GIL), the clients call for --seconds after a
warm-up; rounds alternate between the servers. Reported: requests per second (median over
--rounds), p50/p99 latency over all calls, and volumed/moto throughput ratios. Target (issue 14):
>= 2x moto's throughput at 16 clients. Results: a table on stdout and --json
(default bench/results/kms.json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPS = ("Decrypt", "GenerateDataKeyWithoutPlaintext")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(target: dict):
    import boto3
    from botocore.config import Config

    return boto3.client("kms", endpoint_url=target["url"], region_name=target["region"],
                        aws_access_key_id=target["key_id"], aws_secret_access_key=target["secret"],
                        verify=target.get("verify", True),
                        config=Config(retries={"max_attempts": 1}, max_pool_connections=4))


def _worker(args):
    target, op, seconds, start_at = args
    kms = _client(target)
    if op == "Decrypt":
        call = lambda: kms.decrypt(CiphertextBlob=target["blob"], KeyId=target["key"])  # noqa: E731
    else:
        call = lambda: kms.generate_data_key_without_plaintext(KeyId=target["key"], KeySpec="AES_256")  # noqa: E731
    for _ in range(20):  # warm-up: connection, TLS session
        call()
    while time.time() < start_at:
        time.sleep(0.001)
    lat, errors = [], 0
    end = start_at + seconds
    while True:
        t0 = time.perf_counter()
        if time.time() >= end:
            break
        try:
            call()
        except Exception:
            errors += 1
            continue
        lat.append(time.perf_counter() - t0)
    return lat, errors


def run_case(pool, target, op, clients, seconds):
    start_at = time.time() + 2.0
    results = pool.map(_worker, [(target, op, seconds, start_at)] * clients)
    lat = [x for r in results for x in r[0]]
    errors = sum(r[1] for r in results)
    return {"rps": len(lat) / seconds, "lat": lat, "errors": errors}


def start_volumed(tmp: Path) -> tuple[subprocess.Popen, dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    ks = tmp / "keystore"
    vol = [sys.executable, "-m", "volumed"]
    subprocess.run(vol + ["kms", "list-keys", "--kms", str(ks)], check=True, capture_output=True, env=env)
    from volumed import kms as kms_pkg

    admin = kms_pkg.connect(str(ks))
    account, region = admin.account_id(), admin.region()
    user = f"arn:aws:iam::{account}:user/bench"
    admin.put_principal_policy(PrincipalArn=user, PolicyName="kms", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}))
    admin.close()
    out = subprocess.run(vol + ["iam", "create-access-key", user, "--kms", str(ks), "--json"], check=True,
                         capture_output=True, env=env, text=True)
    ak = json.loads(out.stdout)["AccessKey"]
    proc = subprocess.Popen(vol + ["kms", "serve", "--kms", str(ks), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    info = json.loads(proc.stdout.readline())
    return proc, {"url": info["url"], "region": region, "key_id": ak["AccessKeyId"],
                  "secret": ak["SecretAccessKey"], "verify": info["certificate"]}


def start_moto() -> tuple[subprocess.Popen, dict]:
    port = _free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    return proc, {"url": url, "region": "us-east-1", "key_id": "testing", "secret": "testing"}


def prepare(target: dict) -> None:
    kms = _client(target)
    key = kms.create_key(Description="bench")["KeyMetadata"]["Arn"]
    target["key"] = key
    target["blob"] = kms.generate_data_key_without_plaintext(KeyId=key, KeySpec="AES_256")["CiphertextBlob"]


def pct(lat, p):
    if not lat:
        return float("nan")
    s = sorted(lat)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "kms.json"))
    args = ap.parse_args(argv)
    concurrency = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="volumed-bench-kms-") as tmp:
        vproc, vt = start_volumed(Path(tmp))
        mproc, mt = start_moto()
        try:
            prepare(vt)
            prepare(mt)
            ctx = mp.get_context("fork")
            results: dict = {}
            with ctx.Pool(max(concurrency)) as pool:
                for op in OPS:
                    for c in concurrency:
                        for r in range(args.rounds):
                            for name, target in (("volumed", vt), ("moto", mt)) if r % 2 == 0 else \
                                    (("moto", mt), ("volumed", vt)):
                                res = run_case(pool, target, op, c, args.seconds)
                                slot = results.setdefault(f"{op}/{c}/{name}", {"rps": [], "lat": [], "errors": 0})
                                slot["rps"].append(res["rps"])
                                slot["lat"].extend(res["lat"])
                                slot["errors"] += res["errors"]
        finally:
            for p in (vproc, mproc):
                p.terminate()
                p.wait(timeout=30)
    rows, summary = [], {}
    print(f"{'operation':34} {'clients':>7} {'server':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for op in OPS:
        for c in concurrency:
            for name in ("volumed", "moto"):
                s = results[f"{op}/{c}/{name}"]
                rps = statistics.median(s["rps"])
                p50, p99 = pct(s["lat"], 50) * 1e3, pct(s["lat"], 99) * 1e3
                rows.append({"operation": op, "clients": c, "server": name, "rps": rps, "rps_rounds": s["rps"],
                             "p50_ms": p50, "p99_ms": p99, "errors": s["errors"]})
                print(f"{op:34} {c:>7} {name:>8} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {s['errors']:>6}")
            ratios = [v / m for v, m in zip(results[f"{op}/{c}/volumed"]["rps"], results[f"{op}/{c}/moto"]["rps"])]
            summary[f"{op}/{c}"] = statistics.median(ratios)
            print(f"{op:34} {c:>7}    ratio volumed/moto {summary[f'{op}/{c}']:.2f}x (median of per-round ratios)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                           "seconds": args.seconds, "rounds": args.rounds, "rows": rows,
                                           "ratio_volumed_over_moto": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
