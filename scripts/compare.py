#!/usr/bin/env python3
"""onnx-lambda against the Python pipeline (Pillow + NumPy + ONNX Runtime), same
machine, same run, same images. Run through scripts/compare.sh, which builds
the release binary and the Python environment first.

Both pipelines run on two photo sets: the sample photos (small) and the same
photos upscaled to 4032 pixels on the longer side (12 megapixels, made by
this script). Every configuration runs `--rounds` times, alternating between
the two pipelines, and the table shows medians. Prints a markdown table with
the machine and the command.
"""

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SMALL = os.path.join(ROOT, "tests/data/images")
MODEL = os.path.join(ROOT, "models/mobilenetv2-1.0-fp32.onnx")
PY_PACKAGES_SKIP = {"pip", "setuptools", "_distutils_hack", "wheel", "__pycache__", "distutils-precedence.pth"}


def large_photos(folder):
    """The sample photos, upscaled so the longer side is 4032, as JPEG q90."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for name in sorted(os.listdir(SMALL)):
        if os.path.splitext(name)[1].lower() not in {".jpg", ".png"}:
            continue
        out = os.path.join(folder, os.path.splitext(name)[0] + ".jpg")
        if os.path.exists(out):
            continue
        img = Image.open(os.path.join(SMALL, name)).convert("RGB")
        scale = 4032 / max(img.size)
        size = (round(img.size[0] * scale), round(img.size[1] * scale))
        img.resize(size, Image.BICUBIC).save(out, quality=90)
    return folder


def run(cmd, env=None):
    """Runs a command that must succeed; returns (stdout, wall seconds)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.decode()[-2000:]}")
    return out.decode(), wall


def run_rusage(cmd, env=None):
    """Like run(), with the child's own peak RSS (wait4)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        sys.exit(f"failed ({status}): {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024


# The Lambda architecture this machine's results price: Graviton on arm64.
ARCH = "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"


def machine():
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    field = lambda name: next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.split(":", 1)[0].strip() == name), None)
    # An arm64 kernel names no model, only the core's part number.
    model = field("model name") or (field("CPU part") and f"CPU part {field('CPU part')}") or platform.processor()
    flags = (field("flags") or field("Features") or "").split()
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "asimd"]
    hidden = "; AVX-512 hidden from both sides (scripts/avx2_only.c)" if os.environ.get("ONNX_LAMBDA_AVX2_ONLY") else ""
    return f"{model}, {os.cpu_count()} cores, {platform.machine()} {' '.join(f for f in wanted if f in flags)}{hidden}"


def du(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            fp = os.path.join(dirpath, f)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total


def python_packages_bytes(python):
    site = subprocess.check_output([python, "-c", "import numpy, os; print(os.path.dirname(os.path.dirname(numpy.__file__)))"]).decode().strip()
    return sum(du(os.path.join(site, e)) if os.path.isdir(os.path.join(site, e)) else os.path.getsize(os.path.join(site, e))
               for e in os.listdir(site) if e not in PY_PACKAGES_SKIP and not e.startswith(("pip-", "setuptools-", "wheel-")))


def zipped_bytes(binary):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.write(binary, "bootstrap")
    return len(buf.getvalue())


def moto_cold_start(binary, photo, rounds):
    """Process start to first prediction with the model on S3 (moto), or None."""
    moto = os.path.join(ROOT, "scripts/moto_server.py")
    python = os.path.join(ROOT, ".venv/bin/python")
    if not (os.path.exists(os.path.join(ROOT, ".venv/bin/moto_server")) and os.path.exists(python)):
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([python, moto, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1",
                   AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", MODEL_URI="s3://models/mobilenetv2.onnx")
        upload = ("import boto3,sys,time\n"
                  "for _ in range(50):\n"
                  "  try:\n"
                  "    s3=boto3.client('s3'); s3.create_bucket(Bucket='models'); break\n"
                  "  except Exception: time.sleep(0.1)\n"
                  f"s3.upload_file({MODEL!r},'models','mobilenetv2.onnx')\n")
        subprocess.check_call([python, "-c", upload], env=env)
        return statistics.median(run_rusage([binary, "predict", photo], env)[0] for _ in range(rounds))
    finally:
        server.terminate()
        server.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--python", required=True, help="the interpreter with onnxruntime, pillow, numpy")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--large-dir", default=os.path.join(tempfile.gettempdir(), "onnx-lambda-12mp"))
    args = ap.parse_args()
    large = large_photos(args.large_dir)
    ours = [args.binary, "bench", "--json", "--arch", ARCH, "--iterations", str(args.iterations)]
    ort = [args.python, os.path.join(HERE, "bench_onnxruntime.py"), "--json", "--arch", ARCH, "--iterations", str(args.iterations)]
    configs = {
        # name: (ours command, ort command); None where one side has no such setting
        "small_t1": (ours + ["--threads", "1", "--batch-size", "10", SMALL], ort + ["--threads", "1", "--batch-size", "10", SMALL]),
        "small_best": (ours + ["--batch-size", "1", SMALL], ort + ["--threads", "0", "--batch-size", "1", SMALL]),
        "throughput": (ours + ["--batch-size", "10", SMALL], None),
        "large_t1": (ours + ["--threads", "1", "--batch-size", "10", large], ort + ["--threads", "1", "--batch-size", "10", large]),
    }
    results = {k: ([], []) for k in configs}
    ort_two_procs, cold = [], ([], [])
    photo = os.path.join(SMALL, "grace_hopper.jpg")
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
        for name, (a, b) in configs.items():
            results[name][0].append(json.loads(run(a)[0]))
            if b:
                results[name][1].append(json.loads(run(b)[0]))
        # ONNX Runtime's other throughput setting: one single-threaded process per core.
        procs = [subprocess.Popen(ort + ["--threads", "1", "--batch-size", "10", SMALL], stdout=subprocess.PIPE) for _ in range(os.cpu_count())]
        ort_two_procs.append(sum(json.loads(p.communicate()[0])["images_per_second"] for p in procs))
        cold[0].append(run_rusage([args.binary, "predict", photo]))
        cold[1].append(run_rusage([args.python, os.path.join(HERE, "bench_onnxruntime.py"), "--predict", photo]))
    s3_cold = moto_cold_start(args.binary, photo, args.rounds)
    # The model's multiply-adds and this core's measured FMA peak, from the
    # binary's own profile (the same model file both pipelines run).
    prof = json.loads(run([args.binary, "profile", "--json", "--rounds", "3", "--threads", "1"])[0])
    macs, peak = sum(op["macs"] for op in prof["ops"]), prof["peak"]

    med = statistics.median

    def m(name, side, *path):
        vals = []
        for rep in results[name][side]:
            v = rep
            for p in path:
                v = v[p]
            vals.append(v)
        return med(vals)

    rows = []

    def row(label, a, b, unit, fmt="{:.1f}"):
        ratio = a / b if b else float("nan")
        rows.append(f"| {label} | {fmt.format(a)} {unit} | {fmt.format(b)} {unit} | {ratio:.2f} |")

    row("inference per image, 1 thread", m("small_t1", 0, "stage_mean_ms", "inference"), m("small_t1", 1, "stage_mean_ms", "inference"), "ms", "{:.2f}")
    gmacs = lambda ms: macs / ms / 1e6
    row(f"inference, 1 thread: achieved multiply-adds ({macs / 1e6:.0f} M per image; FMA peak {peak['gmacs']:.1f} GMAC/s per core)",
        gmacs(m("small_t1", 0, "stage_mean_ms", "inference")), gmacs(m("small_t1", 1, "stage_mean_ms", "inference")), "GMAC/s", "{:.1f}")
    row("inference per image, 2 threads (one image)", m("small_best", 0, "stage_mean_ms", "inference"), m("small_best", 1, "stage_mean_ms", "inference"), "ms", "{:.2f}")
    row("end to end per small photo, 1 thread (p50)", m("small_t1", 0, "latency_ms", "p50"), m("small_t1", 1, "latency_ms", "p50"), "ms", "{:.2f}")
    best_ours = min(m("small_t1", 0, "latency_ms", "p50"), m("small_best", 0, "latency_ms", "p50"))
    best_ort = min(m("small_t1", 1, "latency_ms", "p50"), m("small_best", 1, "latency_ms", "p50"))
    row("end to end per small photo, best threads (p50)", best_ours, best_ort, "ms", "{:.2f}")
    ort_best_tp = max(m("small_t1", 1, "images_per_second"), m("small_best", 1, "images_per_second"), med(ort_two_procs))
    row("throughput, both cores, batches of 10 (ORT: best of 1 thread, 2 threads, 2 processes)", m("throughput", 0, "images_per_second"), ort_best_tp, "img/s")
    row("end to end per 12-megapixel JPEG, 1 thread (p50)", m("large_t1", 0, "latency_ms", "p50"), m("large_t1", 1, "latency_ms", "p50"), "ms")
    row("cold start: process start to first prediction, local model", med(c[0] for c in cold[0]) * 1000, med(c[0] for c in cold[1]) * 1000, "ms", "{:.0f}")
    row("peak RSS of that process", med(c[1] for c in cold[0]) / 2**20, med(c[1] for c in cold[1]) / 2**20, "MiB", "{:.0f}")
    row("peak RSS, small photos (bench, 1 thread)", m("small_t1", 0, "peak_rss_bytes") / 2**20, m("small_t1", 1, "peak_rss_bytes") / 2**20, "MiB", "{:.0f}")
    row("peak RSS, 12-megapixel photos (bench, 1 thread)", m("large_t1", 0, "peak_rss_bytes") / 2**20, m("large_t1", 1, "peak_rss_bytes") / 2**20, "MiB", "{:.0f}")
    row("CPU time per small photo, 1 thread", m("small_t1", 0, "cpu_ms_per_image"), m("small_t1", 1, "cpu_ms_per_image"), "ms", "{:.2f}")
    row(f"Lambda cost per million small photos ({ARCH}, 1,769 MB, 10 per invocation)", m("small_t1", 0, "usd_per_million_images"), m("small_t1", 1, "lambda_cost", "usd_per_million_images"), "USD", "{:.3f}")
    row("Lambda cost per million 12-megapixel photos (same)", m("large_t1", 0, "usd_per_million_images"), m("large_t1", 1, "lambda_cost", "usd_per_million_images"), "USD", "{:.3f}")
    size = os.path.getsize(args.binary)
    row("deployment size: binary vs installed packages", size / 1e6, python_packages_bytes(args.python) / 1e6, "MB")
    rows.append(f"| zipped package (`bootstrap`, deflate -9) | {zipped_bytes(args.binary) / 1e6:.1f} MB | | |")
    if s3_cold is not None:
        rows.append(f"| cold start with the model from S3 (moto on loopback) | {s3_cold * 1000:.0f} ms | | |")

    print(f"Machine: {machine()}; measured FMA peak {peak['gmacs']:.1f} GMAC/s per core "
          f"({peak['simd']}, `onnx-lambda profile`)  ")
    print(f"Command: `scripts/compare.sh --rounds {args.rounds} --iterations {args.iterations}` "
          f"({time.strftime('%Y-%m-%d')}); medians of {args.rounds} alternating rounds.\n")
    print("| figure | onnx-lambda | Python + ONNX Runtime | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
