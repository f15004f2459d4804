#!/usr/bin/env python3
"""Instructions per proxied request, counted exactly by valgrind's callgrind
(repeatable whatever else the machine does, unlike time).

    bench/instructions.py [--binary target/release/gatehouse] [--scenarios h1,tls,h2] [--logs off,combined,json]

For each scenario and log format, Gatehouse (one worker) runs under
callgrind in front of the benchmark's nginx upstream (13 B answers) twice:
once for a short load and once for a long one (h2load, 8 connections; for
HTTP/2 32 streams each). The difference of the two totals divided by the
difference in requests is the cost of one request, with start-up, TLS
handshakes and shutdown cancelled out. Everything runs on 127.0.0.1.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402

SCENARIOS = {
    "h1": ("HTTP/1.1 plaintext", lambda http, https: ["--h1", "-c8", f"http://127.0.0.1:{http}/small"]),
    "tls": ("HTTP/1.1 over TLS", lambda http, https: ["--h1", "-c8", f"https://127.0.0.1:{https}/small"]),
    "h2": ("HTTP/2 over TLS, 32 streams", lambda http, https: ["-c8", "-m32", f"https://127.0.0.1:{https}/small"]),
}
SHORT, LONG = 2000, 20000


def total_instructions(binary, scenario, log_format, n, keep=None):
    with tempfile.TemporaryDirectory(prefix="gh-cg") as d:
        cert, key, _ = bench.make_cert(d)
        up = bench.free_port()
        upstream = bench.start_upstream(d, up)
        http, https, ws = bench.free_port(), bench.free_port(), bench.free_port()
        conf = bench.gatehouse_conf(d, cert, key, up, ws, http, https, log_format)
        out = os.path.join(d, "callgrind.out")
        log = open(os.path.join(d, "stdout.log"), "wb")
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                 binary, "--config", conf],
                                stdout=log, stderr=subprocess.DEVNULL, start_new_session=True,
                                env=dict(os.environ, RUST_LOG="warn"))
        try:
            bench.wait_port(http, proc, timeout=120)
            bench.wait_port(https, proc, timeout=120)
            args = SCENARIOS[scenario][1](http, https)
            res = subprocess.run(["h2load", f"-n{n}"] + args, capture_output=True, text=True, timeout=600)
            m = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", res.stdout)
            if not m or int(m.group(1)) != n:
                raise SystemExit(f"h2load did not finish {n} requests:\n{res.stdout}{res.stderr}")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=120)
            log.close()
            os.killpg(upstream.pid, signal.SIGTERM)
            upstream.wait(timeout=15)
        if keep:
            import shutil
            shutil.copy(out, os.path.join(keep, f"callgrind.{scenario}.{log_format}.{n}"))
        with open(out) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    return int(line.split()[1])
    raise SystemExit("no total in the callgrind output")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(bench.ROOT, "target/release/gatehouse"))
    ap.add_argument("--scenarios", default="h1,tls,h2")
    ap.add_argument("--logs", default="off,combined,json")
    ap.add_argument("--keep", help="a folder to keep the long runs' callgrind files in (for callgrind_annotate)")
    args = ap.parse_args()
    bench.install(extra={"valgrind": "valgrind"})
    print("| scenario | access log | instructions/request |")
    print("|---|---|---:|")
    for scenario in args.scenarios.split(","):
        for log_format in args.logs.split(","):
            short = total_instructions(args.binary, scenario, log_format, SHORT)
            long = total_instructions(args.binary, scenario, log_format, LONG, args.keep)
            per = (long - short) / (LONG - SHORT)
            print(f"| {SCENARIOS[scenario][0]} | {log_format} | {per:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
