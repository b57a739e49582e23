#!/usr/bin/env python3
"""Hostile load on `onnx-lambda serve`: a benchmark, not a test.

For SECONDS (default 60), CLIENTS threads (default 16) send a mix of valid
photos and hostile requests to a release `serve` on loopback, while 4 more
connections trickle their headers one byte a second (slow loris). Prints
one markdown table: requests by kind and status, back-pressure (503 with
Retry-After), slow-loris disconnects, and the server's RSS (after warm-up,
peak, at the end), beside the CPU model and the command.

    cargo build --release
    python3 scripts/load_hostile.py [--seconds 60] [--clients 16]

Valid requests must get 200 (or 503 + Retry-After: back-pressure, retried);
hostile ones must get 4xx. Anything else is counted as a failure.

With --no-backoff the clients send again at once whatever they got, and a
valid request's 503 is a failure: the overload check. --baseline first runs
4 well-behaved clients sending only photos for --baseline-seconds, and the
report gives the goodput (valid photos answered 200 per second) of the
loaded run against theirs:

    python3 scripts/load_hostile.py --seconds 45 --clients 64 --no-backoff --baseline
"""
import argparse
import base64
import http.client
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = os.path.join(ROOT, "tests", "data", "images")


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width, height, rows=None):
    """A grey PNG; without rows, only the header (a pixel bomb)."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    body = b""
    if rows is not None:
        body = png_chunk(b"IDAT", zlib.compress(rows, 9))
    return b"\x89PNG\r\n\x1a\n" + ihdr + body + png_chunk(b"IEND", b"")


def corpus():
    photos = []
    for name in sorted(os.listdir(IMAGES)):
        if name.lower().endswith((".jpg", ".png")):
            with open(os.path.join(IMAGES, name), "rb") as f:
                data = f.read()
            ctype = "image/png" if name.endswith(".png") else "image/jpeg"
            photos.append(("photo " + name, "POST", "/predict", ctype, data))
    jpeg = photos[0][4] if photos[0][3] == "image/jpeg" else next(p[4] for p in photos if p[3] == "image/jpeg")
    rng = random.Random(7)
    gif_bomb = b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b",\x00\x00\x00\x00" + struct.pack("<HH", 65535, 65535) + b"\x00\x02\x02\x4c\x01\x00;"
    hostile = [
        ("random bytes", "POST", "/predict", "application/octet-stream", bytes(rng.getrandbits(8) for _ in range(50_000))),
        ("empty body", "POST", "/predict", "image/png", b""),
        ("truncated jpeg", "POST", "/predict", "image/jpeg", jpeg[: len(jpeg) // 2]),
        ("png pixel bomb 100k x 100k", "POST", "/predict", "image/png", png(100_000, 100_000)),
        ("gif pixel bomb 65535 x 65535", "POST", "/predict", "image/gif", gif_bomb),
        ("png 60 MP of zeros", "POST", "/predict", "image/png", png(7_800, 7_800, b"\x00" * ((7_800 + 1) * 7_800))),
        ("oversized body 7 MiB", "POST", "/predict", "application/octet-stream", b"\xff" * (7 << 20)),
        ("wrong content type", "POST", "/predict", "text/plain", b"hello"),
        ("invalid json", "POST", "/predict", "application/json", b'{"image": '),
        ("invalid base64", "POST", "/predict", "application/json", json.dumps({"image": "not base64!"}).encode()),
        ("deeply nested json", "POST", "/predict", "application/json", b"[" * 100_000),
        ("s3_uri outside the allow-list", "POST", "/predict", "application/json", json.dumps({"s3_uri": "s3://secret-bucket/x.jpg"}).encode()),
        ("v2 wrong shape", "POST", "/v2/models/mobilenetv2-1.0/infer", "application/json",
         json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [0.0] * 12}]}).encode()),
        ("unknown route", "GET", "/admin", None, b""),
    ]
    return photos, hostile


def request_expect_continue(base, path, ctype, body, timeout=60):
    """A large upload as curl sends it: headers with `Expect: 100-continue`,
    the body only after `100 Continue`, so a refusal arrives before it."""
    s = socket.create_connection(base, timeout=timeout)
    try:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                  f"Expect: 100-continue\r\nConnection: close\r\n\r\n".encode())
        f = s.makefile("rb")
        status_line = f.readline().decode()
        if " 100 " in status_line:
            f.readline()  # the blank line after the interim response
            s.sendall(body)
            status_line = f.readline().decode()
        headers = {}
        while (line := f.readline().decode().strip()):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        f.read(int(headers.get("content-length", 0)))
        return int(status_line.split()[1]), headers.get("retry-after")
    except (ConnectionError, socket.timeout, ValueError, IndexError) as e:
        return "conn:" + type(e).__name__, None
    finally:
        s.close()


def request(base, method, path, ctype, body, timeout=60):
    if method == "POST" and len(body) > 1 << 20:
        return request_expect_continue(base, path, ctype, body, timeout)
    host, port = base
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"Content-Type": ctype} if ctype else {}
        conn.request(method, path, body=body if method == "POST" else None, headers=headers)
        r = conn.getresponse()
        r.read()
        return r.status, r.getheader("Retry-After")
    except (ConnectionError, socket.timeout, http.client.HTTPException) as e:
        return "conn:" + type(e).__name__, None
    finally:
        conn.close()


def rss(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def cpu_model():
    model, flags = "?", ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = " ".join(x for x in ("avx2", "fma", "avx512f", "avx512bw", "avx512vnni") if x in have)
    return f"{model} ({os.cpu_count()} cores; {flags})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--loris", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=10, help="seconds of the same load before the baseline RSS")
    ap.add_argument("--no-backoff", action="store_true", help="send again at once; a valid request's 503 is a failure")
    ap.add_argument("--baseline", action="store_true", help="first measure the goodput of 4 well-behaved photo clients")
    ap.add_argument("--baseline-seconds", type=float, default=15)
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "onnx-lambda"))
    args = ap.parse_args()
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"{args.binary} not found: cargo build --release first")

    env = dict(os.environ, RUST_LOG="error")
    server = subprocess.Popen([args.binary, "serve", "--addr", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        url = server.stdout.readline().strip().removeprefix("listening on http://")
        host, port = url.split(":")
        base = (host, int(port))
        while request(base, "GET", "/ready", None, b"", 2)[0] != 200:
            time.sleep(0.1)
        photos, hostile = corpus()
        stats = {}
        backpressure = {}
        lock = threading.Lock()
        peak = [0]

        def client(seed, until, record, hostile_share=0.5, backoff=not args.no_backoff, tally=None):
            """Sends the mix until `until`; a 503 with Retry-After is
            back-pressure: wait and send the same request again, as a
            well-behaved client does, until it gets its final answer
            (unless --no-backoff)."""
            rng = random.Random(seed)
            while time.time() < until:
                valid = rng.random() >= hostile_share
                name, method, path, ctype, body = rng.choice(photos if valid else hostile)
                kind = "valid" if valid else "hostile"
                while True:
                    status, retry = request(base, method, path, ctype, body)
                    if status != 503 or not retry or not backoff:
                        break
                    if record:
                        with lock:
                            backpressure[kind] = backpressure.get(kind, 0) + 1
                    time.sleep(float(retry) * rng.random())
                if valid:
                    outcome = "200" if status == 200 else f"FAILED ({status})"
                else:
                    outcome = f"{status}" if isinstance(status, int) and 400 <= status < 500 else f"FAILED ({status})"
                if record:
                    key = (kind, "photos" if valid else name, outcome)
                    with lock:
                        stats[key] = stats.get(key, 0) + 1
                if tally is not None and valid and status == 200:
                    with lock:
                        tally[0] += 1

        goodput_base = None
        if args.baseline:
            served = [0]
            until = time.time() + args.baseline_seconds
            polite = [threading.Thread(target=client, args=(500 + i, until, False, 0.0, True, served)) for i in range(4)]
            for t in polite:
                t.start()
            for t in polite:
                t.join()
            goodput_base = served[0] / args.baseline_seconds

        # Warm-up: the same mix for a while (every thread's buffers and
        # caches in place), then the baseline RSS.
        until = time.time() + args.warmup
        warmers = [threading.Thread(target=client, args=(1000 + i, until, False)) for i in range(args.clients)]
        for t in warmers:
            t.start()
        for t in warmers:
            t.join()
        time.sleep(1)
        warm = rss(server.pid)["VmRSS"]
        peak[0] = warm
        stop = time.time() + args.seconds

        loris_closed = [0]

        def loris():
            while time.time() < stop:
                s = socket.create_connection(base)
                try:
                    for byte in b"GET /health HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"a" * 200:
                        if time.time() >= stop:
                            return
                        s.send(bytes([byte]))
                        time.sleep(1)
                except OSError:
                    with lock:
                        loris_closed[0] += 1
                finally:
                    s.close()

        def sampler():
            while time.time() < stop:
                peak[0] = max(peak[0], rss(server.pid)["VmRSS"])
                time.sleep(0.1)

        served = [0]
        started = time.time()
        threads = [threading.Thread(target=client, args=(i, stop, True, 0.5, not args.no_backoff, served)) for i in range(args.clients)]
        threads += [threading.Thread(target=loris) for _ in range(args.loris)]
        threads.append(threading.Thread(target=sampler))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1)
        end = rss(server.pid)
        hwm = end["VmHWM"]
        failed = sum(n for (_, _, o), n in stats.items() if o.startswith("FAILED"))
        goodput = served[0] / (stop - started)
        valid_total = sum(n for (k, _, _), n in stats.items() if k == "valid")
        valid_ok = sum(n for (k, _, o), n in stats.items() if k == "valid" and o == "200")
        conn_errors = sum(n for (_, _, o), n in stats.items() if "conn:" in o)
        mib = lambda b: f"{b / 2**20:.0f} MiB"
        malloc = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_"))
        flags = (" --no-backoff" if args.no_backoff else "") + (f" --baseline --baseline-seconds {args.baseline_seconds:g}" if args.baseline else "")
        print(f"`{malloc + ' ' if malloc else ''}python3 scripts/load_hostile.py --seconds {args.seconds:g} --clients {args.clients} --loris {args.loris}{flags}`, "
              f"release build, {cpu_model()}\n")
        print("| kind | request | outcome | count |\n| --- | --- | --- | --- |")
        for (kind, name, outcome), n in sorted(stats.items()):
            print(f"| {kind} | {name} | {outcome} | {n} |")
        print(f"\nback-pressure (503 + Retry-After, then retried): {backpressure.get('valid', 0)} for valid requests, "
              f"{backpressure.get('hostile', 0)} for hostile ones")
        print(f"slow-loris connections closed by the server: {loris_closed[0]}")
        print(f"RSS after warm-up {mib(warm)}, peak {mib(hwm)} (sampled {mib(peak[0])}), at the end {mib(end['VmRSS'])} "
              f"({(end['VmRSS'] / warm - 1) * 100:+.0f}% of warm-up)")
        print(f"valid requests answered 200: {valid_ok} of {valid_total} ({100 * valid_ok / max(valid_total, 1):.2f}%); "
              f"connection errors: {conn_errors}")
        if goodput_base is not None:
            print(f"goodput: {goodput:.1f} photos/s against {goodput_base:.1f} from 4 well-behaved clients "
                  f"({goodput / max(goodput_base, 1e-9):.2f}x)")
        else:
            print(f"goodput: {goodput:.1f} photos/s")
        print(f"failures: {failed}")
        sys.exit(1 if failed else 0)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
