#!/usr/bin/env python3
"""Side-by-side benchmark: Gatehouse, nginx and HAProxy in front of the same
upstream, on loopback, one worker each pinned to core 0, load generators and
upstream on core 1.

    bench/run.py [--rounds 3] [--duration 5] [--out docs/benchmarks.md] [--no-pgo | --train-only]

Installs what it needs from Debian's packages (nginx, haproxy, wrk,
nghttp2-client for h2load, openssl), builds Gatehouse and the WebSocket
tool (examples/wsbench.rs) in release mode, and Gatehouse again guided by
the profile of a short training run (see build_pgo), runs every scenario
for every peer, interleaved within each round, and prints the medians and
the Gatehouse/nginx ratios. Everything runs on 127.0.0.1 and every run is
bounded by --duration.

The CPU figure is the proxy's own utime+stime from /proc divided by the
requests it served: the figure that holds on a noisy 2-core machine;
user and system time are reported apart. Every scenario runs twice per
round, with access logs off and on (each proxy's own default format,
written to a file: Gatehouse's stdout, nginx's access_log, HAProxy's
`log stdout`), and the ratios include HAProxy's.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CORE = "0"
LOAD_CORE = "1"
SECURITY_HEADERS = [
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "SAMEORIGIN"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Content-Security-Policy", "frame-ancestors 'self'"),
]


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def install(extra=None):
    need = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "h2load": "nghttp2-client", "openssl": "openssl"}
    need.update(extra or {})
    missing = [pkg for binary, pkg in need.items() if shutil.which(binary) is None]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        sh(sudo + ["apt-get", "update", "-qq"])
        sh(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def build():
    """The release build as `cargo build --release` makes it, and the WebSocket tool."""
    sh(["cargo", "build", "--release", "--bin", "gatehouse", "--example", "wsbench"], cwd=ROOT)
    out = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"), "release")
    return (os.path.join(out, "gatehouse"), os.path.join(out, "examples", "wsbench"))


# Where the profile-guided build and its profile go: a target directory of
# their own, so that the flags do not rebuild the everyday one.
PGO_DIR = os.path.join(ROOT, "target", "pgo")
PGO_PROFILE = os.path.join(PGO_DIR, "gatehouse.profdata")


def llvm_profdata():
    """The `llvm-profdata` of the toolchain's own LLVM (rustup's llvm-tools):
    a profile is read by the LLVM that wrote its format."""
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True).stdout.strip()
    host = re.search(r"^host: (\S+)$", subprocess.run(["rustc", "-vV"], capture_output=True, text=True,
                                                      check=True).stdout, re.M).group(1)
    tool = os.path.join(sysroot, "lib", "rustlib", host, "bin", "llvm-profdata")
    if not os.path.exists(tool):
        sh(["rustup", "component", "add", "llvm-tools-preview"])
    return tool


def build_pgo(train):
    """A profile-guided release build: an instrumented build is run through
    `train(binary)`, its counts merged, and the release build made again
    with them, so that LLVM lays out and inlines the paths the loads take.
    Returns the optimised binary; the merged profile stays at PGO_PROFILE
    (scripts/image builds the static binary with it when asked)."""
    raw = os.path.join(PGO_DIR, "raw")
    shutil.rmtree(raw, ignore_errors=True)
    os.makedirs(raw)
    cargo = ["cargo", "build", "--locked", "--release", "--bin", "gatehouse"]
    sh(cargo, cwd=ROOT, env=dict(os.environ, CARGO_TARGET_DIR=os.path.join(PGO_DIR, "generate"),
                                 RUSTFLAGS=f"-Cprofile-generate={raw}"))
    train(os.path.join(PGO_DIR, "generate", "release", "gatehouse"))
    if not any(name.endswith(".profraw") for name in os.listdir(raw)):
        raise SystemExit("profile-guided build: the training run wrote no profile")
    sh([llvm_profdata(), "merge", "-o", PGO_PROFILE, raw])
    sh(cargo, cwd=ROOT, env=dict(os.environ, CARGO_TARGET_DIR=os.path.join(PGO_DIR, "use"),
                                 RUSTFLAGS=f"-Cprofile-use={PGO_PROFILE}"))
    return os.path.join(PGO_DIR, "use", "release", "gatehouse")


# What the training runs: every scenario that moves requests, with each
# access log format, and a compressed answer (compression is on by
# default). Code no run reaches is laid out as cold, so the training
# covers what users turn on, not only what the side-by-side measures.
TRAINING = ["h1_plain_small", "h1_tls_small", "h1_tls_64k", "tls_new_conn", "h2_tls_small", "ws_echo", "h1_gzip"]


def train(binary, wsbench, d, cert, key, up, ws):
    for log_format in ("off", "combined", "json"):
        for scenario in TRAINING:
            http, https = free_port(), free_port()
            conf = gatehouse_conf(d, cert, key, up, ws, http, https, log_format)
            peer = Peer("gatehouse", [binary, "--config", conf], http, https, env=dict(os.environ, RUST_LOG="warn"),
                        stdout_path=None if log_format == "off" else os.path.join(d, "training-access.log"))
            try:
                if scenario == "h1_gzip":
                    run_wrk(f"http://127.0.0.1:{http}/page", 8, 1, ("-H", "Accept-Encoding: gzip"))
                else:
                    measure(scenario, peer, wsbench, 1, d)
            finally:
                # A clean exit is what writes the counts.
                peer.stop()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc=None, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(entry))
            except OSError:
                pass
    return out


def tree(pid):
    pids = [pid]
    for c in children(pid):
        pids.extend(tree(c))
    return pids


def cpu_seconds(pids):
    """(user, system) seconds of the processes."""
    user = system = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except OSError:
            pass
    return user / CLK_TCK, system / CLK_TCK


def status_kib(pids, key):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Peer:
    def __init__(self, name, argv, http, https, env=None, stdout_path=None):
        self.name, self.http, self.https = name, http, https
        out = open(stdout_path, "ab") if stdout_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(["taskset", "-c", PROXY_CORE] + argv, stdout=out,
                                     stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        if stdout_path:
            out.close()
        wait_port(http, self.proc)
        wait_port(https, self.proc)

    def pids(self):
        return tree(self.proc.pid)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def make_cert(d):
    key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
    sh(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key + ".ec"], stdout=subprocess.DEVNULL)
    sh(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", key + ".ec", "-out", key])
    sh(["openssl", "req", "-x509", "-new", "-key", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], stdout=subprocess.DEVNULL)
    write(os.path.join(d, ".hostname_marker"), "localhost\n")
    combined = os.path.join(d, "combined.pem")
    with open(combined, "w") as f:
        f.write(open(cert).read() + open(key).read())
    return cert, key, combined


# A compressible answer for the profile-guided build's training.
PAGE = "<!doctype html><title>Gatehouse</title>" + "<p>A page of text that compresses well.</p>" * 48


def start_upstream(d, port):
    big = os.path.join(d, "big.bin")
    with open(big, "wb") as f:
        f.write(b"x" * 65536)
    os.chmod(big, 0o644)
    conf = write(os.path.join(d, "upstream.conf"), f"""
worker_processes 1;
pid {d}/upstream.pid;
error_log stderr crit;
events {{ worker_connections 30000; }}
http {{
    access_log off;
    default_type application/octet-stream;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location = /small {{ return 200 "Hello, world!"; }}
        location = /big {{ alias {big}; }}
        location = /page {{ default_type text/html; return 200 "{PAGE}"; }}
    }}
}}
""")
    proc = subprocess.Popen(["taskset", "-c", LOAD_CORE, "nginx", "-c", conf, "-g", "daemon off;", "-e", "stderr"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port, proc)
    return proc


def gatehouse_conf(d, cert, key, up, ws, http, https, log_format):
    """The benchmark's Gatehouse configuration (one worker, the three routes)."""
    return write(os.path.join(d, "gatehouse.toml"), f"""
http_port = {http}
https_port = {https}
bind = ["127.0.0.1"]
workers = 1
force_https_redirect = false
log_format = "{log_format}"

[tls]
cert = "{cert}"
key = "{key}"

[listener]
max_connections = 100000
max_connections_per_ip = 100000

[[route]]
path = "/ws"
upstream = "http://127.0.0.1:{ws}"

[[route]]
path = "/small"
upstream = "http://127.0.0.1:{up}"

[[route]]
path = "/big"
upstream = "http://127.0.0.1:{up}"

[[route]]
path = "/page"
upstream = "http://127.0.0.1:{up}"
""")


def gatehouse_peer(binary, d, cert, key, up, ws, http, https, logs):
    # With logs, each proxy's default format, into a file.
    conf = gatehouse_conf(d, cert, key, up, ws, http, https, "combined" if logs else "off")
    env = dict(os.environ, RUST_LOG="warn")
    return Peer("gatehouse", [binary, "--config", conf], http, https, env=env,
                stdout_path=os.path.join(d, "gatehouse-access.log") if logs else None)


def nginx_peer(d, cert, key, up, ws, http, https, logs):
    headers = "\n".join(f"        add_header {k} \"{v}\" always;" for k, v in SECURITY_HEADERS)
    proxy = """
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Connection "";"""
    conf = write(os.path.join(d, "nginx.conf"), f"""
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr crit;
events {{ worker_connections 30000; }}
http {{
    {f"access_log {d}/nginx-access.log combined;" if logs else "access_log off;"}
    keepalive_requests 1000000;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    upstream up {{ server 127.0.0.1:{up}; keepalive 128; }}
    upstream ws {{ server 127.0.0.1:{ws}; }}
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{http};
        listen 127.0.0.1:{https} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
{headers}
        location /ws {{
            proxy_pass http://ws;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 3600s;
        }}
        location /small {{ proxy_pass http://up;{proxy} }}
        location /big {{ proxy_pass http://up;{proxy} }}
    }}
}}
""")
    return Peer("nginx", ["nginx", "-c", conf, "-g", "daemon off;", "-e", "stderr"], http, https)


def haproxy_peer(d, combined, up, ws, http, https, logs):
    headers = "\n".join(f"    http-response set-header {k} \"{v}\"" for k, v in SECURITY_HEADERS)
    conf = write(os.path.join(d, "haproxy.cfg"), f"""
global
    nbthread 1
    # HAProxy needs two descriptors per connection and this machine's
    # hard limit is 20000: the most it can hold.
    maxconn 9990
    tune.ssl.default-dh-param 2048
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
{"    log stdout format raw local0" + chr(10) + "    option httplog" if logs else ""}
    timeout connect 10s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{http}
    bind 127.0.0.1:{https} ssl crt {combined} alpn h2,http/1.1
    option forwardfor
    http-request set-header X-Real-IP %[src]
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
{headers}
    use_backend ws if {{ path_beg /ws }}
    default_backend up
backend up
    http-reuse always
    server up 127.0.0.1:{up}
backend ws
    server ws 127.0.0.1:{ws}
""")
    return Peer("haproxy", ["haproxy", "-f", conf, "-db"], http, https,
                stdout_path=os.path.join(d, "haproxy-access.log") if logs else None)


def pct(sorted_values, p):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def wrk_time_us(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]


def run_wrk(url, conns, duration, extra=()):
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", *extra, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    return {"requests": requests, "rps": requests / duration, "p50": wrk_time_us(lat["50"]),
            "p99": wrk_time_us(lat["99"]), "errors": errors}


def run_h2load(url, duration, d):
    log = os.path.join(d, "h2load.log")
    cmd = ["taskset", "-c", LOAD_CORE, "h2load", "-c8", "-m32", f"-D{duration}", f"--log-file={log}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    succeeded, failed, errored = int(m.group(4)), int(m.group(5)), int(m.group(6))
    durations = []
    with open(log) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                durations.append(float(parts[2]))
    durations.sort()
    return {"requests": succeeded, "rps": succeeded / duration, "p50": pct(durations, 0.5),
            "p99": pct(durations, 0.99), "errors": failed + errored}


def run_ws(wsbench, port, duration):
    cmd = ["taskset", "-c", LOAD_CORE, wsbench, "rtt", f"127.0.0.1:{port}", "/ws", "16", str(duration)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {"requests": r["requests"], "rps": r["requests"] / duration, "p50": float(r["p50_us"]),
            "p99": float(r["p99_us"]), "errors": r["errors"]}


def run_idle(wsbench, peer, n=10000, tls=False):
    before = status_kib(peer.pids(), "VmRSS")
    port = peer.https if tls else peer.http
    proc = subprocess.Popen(["taskset", "-c", LOAD_CORE, wsbench, "idle", f"127.0.0.1:{port}", str(n)]
                            + (["tls"] if tls else []),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    ok = line.startswith("ready")
    time.sleep(0.5)  # let the proxy settle its buffers after the last response; a measurement, not a synchronisation
    after = status_kib(peer.pids(), "VmRSS")
    proc.stdin.close()
    proc.wait(timeout=60)
    return {"requests": n if ok else 0, "rps": 0.0, "p50": 0.0, "p99": 0.0, "errors": 0 if ok else n,
            "kib_per_conn": (after - before) / n}


SCENARIOS = [
    ("h1_plain_small", "HTTP/1.1 keep-alive, 13 B"),
    ("h1_tls_small", "HTTP/1.1 over TLS 1.3, 13 B"),
    ("h1_tls_64k", "HTTP/1.1 over TLS, 64 KiB"),
    ("tls_new_conn", "new TLS connection per request"),
    ("h2_tls_small", "HTTP/2 over TLS, 8 conns x 32 streams"),
    ("ws_echo", "WebSocket echo round trips"),
    ("idle_10k", "10,000 idle keep-alive connections"),
    ("idle_10k_tls", "10,000 idle keep-alive connections over TLS"),
]


def measure(scenario, peer, wsbench, duration, d):
    pids = peer.pids()
    user0, sys0 = cpu_seconds(pids)
    if scenario == "h1_plain_small":
        r = run_wrk(f"http://127.0.0.1:{peer.http}/small", 32, duration)
    elif scenario == "h1_tls_small":
        r = run_wrk(f"https://127.0.0.1:{peer.https}/small", 32, duration)
    elif scenario == "h1_tls_64k":
        r = run_wrk(f"https://127.0.0.1:{peer.https}/big", 16, duration)
    elif scenario == "tls_new_conn":
        r = run_wrk(f"https://127.0.0.1:{peer.https}/small", 16, duration, ("-H", "Connection: close"))
    elif scenario == "h2_tls_small":
        r = run_h2load(f"https://127.0.0.1:{peer.https}/small", duration, d)
    elif scenario == "ws_echo":
        r = run_ws(wsbench, peer.http, duration)
    elif scenario == "idle_10k":
        # HAProxy cannot hold 10,000 under a 20,000 descriptor limit (see its
        # maxconn); it is measured with 9,000, per connection all the same.
        r = run_idle(wsbench, peer, 9000 if peer.name == "haproxy" else 10000)
    elif scenario == "idle_10k_tls":
        r = run_idle(wsbench, peer, 9000 if peer.name == "haproxy" else 10000, tls=True)
    else:
        raise ValueError(scenario)
    user1, sys1 = cpu_seconds(peer.pids())
    per = (lambda s: s * 1e6 / r["requests"]) if r["requests"] else (lambda s: float("nan"))
    r["user_us_per_req"] = per(user1 - user0)
    r["sys_us_per_req"] = per(sys1 - sys0)
    r["cpu_us_per_req"] = per(user1 - user0 + sys1 - sys0)
    r["peak_rss_mib"] = status_kib(peer.pids(), "VmHWM") / 1024
    return r


class Direct:
    """The upstream itself, as the ceiling for plain HTTP/1.1."""

    def __init__(self, port, proc):
        self.name, self.http, self.https, self.proc = "direct", port, None, proc

    def pids(self):
        return tree(self.proc.pid)


def median_of(results, key):
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}"


def versions(binary):
    def first(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except OSError:
            return "?"
    return {
        "gatehouse": first([binary, "--version"]),
        "nginx": first(["nginx", "-v"]),
        "haproxy": first(["haproxy", "-v"]),
        "wrk": first(["wrk", "-v"]),
        "h2load": first(["h2load", "--version"]),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/benchmarks.md"))
    ap.add_argument("--peers", default="gatehouse,nginx,haproxy")
    ap.add_argument("--scenarios", default=",".join(name for name, _ in SCENARIOS))
    ap.add_argument("--logs", default="off,on", help="access log modes to run: off, on or both")
    ap.add_argument("--pgo", action=argparse.BooleanOptionalAction, default=True,
                    help="measure the profile-guided build (the default) or the plain release build")
    ap.add_argument("--train-only", action="store_true",
                    help=f"make the profile and the profile-guided build, measure nothing "
                         f"(scripts/image --pgo; the profile is left at {os.path.relpath(PGO_PROFILE, ROOT)})")
    args = ap.parse_args()
    if args.train_only and not args.pgo:
        ap.error("--train-only makes the profile-guided build: it cannot go with --no-pgo")
    install()
    gatehouse_bin, wsbench = build()
    d = tempfile.mkdtemp(prefix="gatehouse-bench-")
    # nginx workers drop root privileges: they must be able to read the files.
    os.chmod(d, 0o755)
    cert, key, combined = make_cert(d)
    up_port, ws_port = free_port(), free_port()
    upstream = start_upstream(d, up_port)
    ws_echo = subprocess.Popen(["taskset", "-c", LOAD_CORE, wsbench, "echo", f"127.0.0.1:{ws_port}"],
                               stdout=subprocess.DEVNULL, start_new_session=True)
    wait_port(ws_port, ws_echo)
    peers = args.peers.split(",")
    modes = [m == "on" for m in args.logs.split(",")]
    results = {}  # (scenario, peer, logs) -> [result per round]
    try:
        if args.pgo and ("gatehouse" in peers or args.train_only):
            gatehouse_bin = build_pgo(lambda binary: train(binary, wsbench, d, cert, key, up_port, ws_port))
        args.binary = gatehouse_bin
        for rnd in range(0 if args.train_only else args.rounds):
            for scenario, _ in SCENARIOS:
                if scenario not in args.scenarios.split(","):
                    continue
                # Idle connections log nothing: one mode is enough.
                for logs in (modes[:1] if scenario.startswith("idle_10k") else modes):
                    for name in peers:
                        http, https = free_port(), free_port()
                        if name == "gatehouse":
                            peer = gatehouse_peer(gatehouse_bin, d, cert, key, up_port, ws_port, http, https, logs)
                        elif name == "nginx":
                            peer = nginx_peer(d, cert, key, up_port, ws_port, http, https, logs)
                        else:
                            peer = haproxy_peer(d, combined, up_port, ws_port, http, https, logs)
                        try:
                            r = measure(scenario, peer, wsbench, args.duration, d)
                        finally:
                            peer.stop()
                        results.setdefault((scenario, name, logs), []).append(r)
                        print(f"round {rnd + 1} {scenario:15} {name:10} logs {'on ' if logs else 'off'} "
                              f"{r['rps']:>10.0f} req/s  p50 {r['p50']:>8.0f}us  p99 {r['p99']:>8.0f}us  "
                              f"cpu {r['cpu_us_per_req']:>7.2f}us/req (user {r['user_us_per_req']:.2f}, "
                              f"sys {r['sys_us_per_req']:.2f})  rss {r['peak_rss_mib']:.1f}MiB"
                              + (f"  {r['kib_per_conn']:.2f}KiB/conn" if "kib_per_conn" in r else "")
                              + (f"  errors {r['errors']}" if r["errors"] else ""), flush=True)
            if "h1_plain_small" not in args.scenarios.split(","):
                continue
            direct = Direct(up_port, upstream)
            r = measure("h1_plain_small", direct, wsbench, args.duration, d)
            results.setdefault(("h1_plain_small", "direct", modes[0]), []).append(r)
            print(f"round {rnd + 1} h1_plain_small  direct     {r['rps']:>10.0f} req/s  p50 {r['p50']:>8.0f}us  "
                  f"p99 {r['p99']:>8.0f}us", flush=True)
    finally:
        for p in (upstream, ws_echo):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            p.wait()
        shutil.rmtree(d, ignore_errors=True)
    if args.train_only:
        print(f"profile: {PGO_PROFILE}\nprofile-guided build: {gatehouse_bin}")
        return
    report = render(results, peers, args)
    print(report)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(report)


def render(results, peers, args):
    modes = [m == "on" for m in args.logs.split(",")]
    lines = []
    lines.append("# Benchmarks\n")
    lines.append(f"Machine: {machine()}.  ")
    lines.append(f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.  ")
    lines.append(f"Command: `bench/run.py --rounds {args.rounds} --duration {args.duration}` "
                 f"({args.rounds} rounds of {args.duration} s per scenario, peer and log mode, peers interleaved, "
                 "medians).\n")
    lines.append("Every proxy runs one worker pinned to core 0; wrk, h2load, the WebSocket client and the upstream "
                 "(nginx serving 13 B and 64 KiB, and a WebSocket echo) share core 1. All three proxies add the same "
                 "five security headers and the forwarding headers of AliasVault's nginx (X-Real-IP, "
                 "X-Forwarded-For, X-Forwarded-Proto; Gatehouse, as it does by default, also sends "
                 "X-Forwarded-Host, X-Forwarded-Port and X-Request-Id upstream and answers with Vary, "
                 "X-Request-Id and over TLS Strict-Transport-Security besides), use the same ECDSA P-256 certificate and "
                 "keep upstream connections alive. With access logs on, each proxy writes its default format to a "
                 "file (Gatehouse combined on stdout, nginx combined, HAProxy httplog on stdout). CPU is the proxy's "
                 "utime+stime per request from /proc, user and system apart; peak RSS is VmHWM (nginx: master and "
                 "worker).\n")
    lines.append("Versions: " + "; ".join(f"{k} `{v}`" for k, v in versions(args.binary).items()) + ".\n")
    lines.append("Gatehouse build: " + ("profile-guided (`bench/run.py` trains an instrumented build on every "
                                        "scenario above, each access log format and a compressed answer, then "
                                        "builds again with the counts; the release profile otherwise)."
                                        if args.pgo else "`cargo build --release` (`--no-pgo`).") + "\n")
    for logs in modes:
        lines.append(f"## Access logs {'on' if logs else 'off'}\n")
        lines.append("| scenario | peer | req/s | p50 µs | p99 µs | CPU µs/req | user | system | peak RSS MiB "
                     "| KiB/idle conn | errors |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for scenario, title in SCENARIOS:
            for name in peers + (["direct"] if scenario == "h1_plain_small" else []):
                rs = results.get((scenario, name, logs), [])
                if not rs:
                    continue
                kib = median_of(rs, "kib_per_conn") if "kib_per_conn" in rs[0] else None
                lines.append(f"| {title} | {name} | {median_of(rs, 'rps'):.0f} | {median_of(rs, 'p50'):.0f} | "
                             f"{median_of(rs, 'p99'):.0f} | {median_of(rs, 'cpu_us_per_req'):.2f} | "
                             f"{median_of(rs, 'user_us_per_req'):.2f} | {median_of(rs, 'sys_us_per_req'):.2f} | "
                             f"{median_of(rs, 'peak_rss_mib'):.1f} | {'' if kib is None else f'{kib:.2f}'} | "
                             f"{sum(r['errors'] for r in rs)} |")
        lines.append("")
        lines.append(f"Ratios, access logs {'on' if logs else 'off'} (medians; below 1 is better for CPU, latency "
                     "and memory). Each rounds column gives the lowest and highest of the rounds' own ratios "
                     "(Gatehouse's run over nginx's run in the same round, seconds apart): how far one round's "
                     "answer strays from the medians'.\n")
        lines.append("| scenario | CPU/req ÷ nginx | rounds | user ÷ nginx | system ÷ nginx | CPU/req ÷ HAProxy "
                     "| p99 ÷ nginx | rounds | peak RSS ÷ nginx | KiB/idle conn ÷ nginx | req/s ÷ nginx |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for scenario, title in SCENARIOS:
            g = results.get((scenario, "gatehouse", logs))
            n = results.get((scenario, "nginx", logs))
            h = results.get((scenario, "haproxy", logs))
            if not g or not n:
                continue

            def ratio(other, key):
                if not other:
                    return "n/a"
                a, b = median_of(g, key), median_of(other, key)
                return f"{a / b:.2f}" if b else "n/a"

            def spread(key):
                # Each round runs the peers one after the other, seconds
                # apart: a round's pair shares the host's state of the
                # moment, so its ratio shows the noise the medians hide.
                rs = [a[key] / b[key] for a, b in zip(g, n) if b[key]]
                return f"{min(rs):.2f}–{max(rs):.2f}" if len(rs) > 1 else ""
            kib = ratio(n, "kib_per_conn") if "kib_per_conn" in g[0] else ""
            lines.append(f"| {title} | {ratio(n, 'cpu_us_per_req')} | {spread('cpu_us_per_req')} | "
                         f"{ratio(n, 'user_us_per_req')} | {ratio(n, 'sys_us_per_req')} | "
                         f"{ratio(h, 'cpu_us_per_req')} | {ratio(n, 'p99')} | {spread('p99')} | "
                         f"{ratio(n, 'peak_rss_mib')} | {kib} | {ratio(n, 'rps')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
