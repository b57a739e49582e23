#!/usr/bin/env python3
"""The zoo table: each model of scripts/zoo.py through onnx-lambda and
through ONNX Runtime, same run, same machine; prints one markdown table.

    python3 scripts/zoo_compare.py --binary BIN [--zoo DIR] [--models a,b]
        [--rounds 2] [--iterations 8] [--simd LEVEL]

(`scripts/compare.sh --zoo` runs it with the release binary.) Per model:
- inference per image, milliseconds, at 1 thread and at 2 (one image
  split over both cores): onnx-lambda's `bench --batch-size 1`
  (`stage_mean_ms.inference`, over the sample photos) against ONNX
  Runtime's `session.run` on the zoo's input tensor with
  `intra_op_num_threads` 1 or 2. Rounds alternate the two, and each
  figure is the median of its rounds. The ratio is onnx-lambda's time
  over ONNX Runtime's: below 1 is faster.
- GMAC/s at one thread (the model's multiply-accumulates, counted by
  `profile`, over the 1-thread time) and its share of this core's
  measured FMA peak (`profile`'s `peak`);
- the share of `profile`'s time spent in the project's own operators.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from compare import machine


def ours(binary, model, threads, iterations, simd):
    cmd = [binary, "bench", "--model", model, "--batch-size", "1", "--iterations", str(iterations),
           "--threads", str(threads), "--json"]
    if simd:
        cmd += ["--simd", simd]
    env = dict(os.environ, RUST_LOG="error")
    out = subprocess.run(cmd, check=True, capture_output=True, env=env).stdout
    return json.loads(out)["stage_mean_ms"]["inference"]


def ort(model, threads, runs, x):
    import onnxruntime as rt
    options = rt.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = rt.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(3):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - started) * 1000)
    return statistics.mean(times)


def profile(binary, model, simd):
    cmd = [binary, "profile", "--model", model, "--rounds", "5", "--threads", "1", "--json"]
    if simd:
        cmd += ["--simd", simd]
    out = subprocess.run(cmd, check=True, capture_output=True,
                         env=dict(os.environ, RUST_LOG="error")).stdout
    p = json.loads(out)
    total = sum(o["ms"] for o in p["ops"])
    own = sum(o["ms"] for o in p["ops"] if "onnx-lambda" in o["op"])
    macs = sum(o["macs"] for o in p["ops"])
    top = sorted(p["ops"], key=lambda o: -o["ms"])[:2]
    return {"macs": macs, "peak": p["peak"]["gmacs"], "own": own / total if total else 0,
            "top": ", ".join(f"{o['op']} {o['ms'] / total:.0%}" for o in top)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--zoo", default=os.path.expanduser("~/.cache/onnx-lambda/zoo"))
    ap.add_argument("--models", default="", help="comma-separated (default: every model in the zoo's index)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=8, help="bench passes over the 6 sample photos")
    ap.add_argument("--simd", default="", help="passed to bench and profile: portable, avx2, avx512 (x86_64); portable, neon (arm64)")
    args = ap.parse_args()
    index = json.load(open(os.path.join(args.zoo, "index.json")))
    wanted = [m for m in args.models.split(",") if m]
    rows = []
    for m in index:
        if wanted and m["name"] not in wanted:
            continue
        x = np.fromfile(os.path.join(args.zoo, f"{m['name']}.input.f32"), dtype="<f4").reshape(1, 3, 224, 224)
        runs = 6 * args.iterations
        times = {k: [] for k in ("o1", "r1", "o2", "r2")}
        for _ in range(args.rounds):
            times["o1"].append(ours(args.binary, m["path"], 1, args.iterations, args.simd))
            times["r1"].append(ort(m["path"], 1, runs, x))
            times["o2"].append(ours(args.binary, m["path"], 2, args.iterations, args.simd))
            times["r2"].append(ort(m["path"], 2, runs, x))
        t = {k: statistics.median(v) for k, v in times.items()}
        p = profile(args.binary, m["path"], args.simd)
        gmacs = p["macs"] / t["o1"] / 1e6
        rows.append((m["name"], t, p, gmacs))
        print(f"{m['name']}: {t}", file=sys.stderr)
    cmd = " ".join(["python3 scripts/zoo_compare.py"] + sys.argv[1:])
    print(f"`{cmd}`, {machine()}, {time.strftime('%Y-%m-%d')}\n")
    print("| model | GMAC | 1 thread: ms (ORT) | ratio | GMAC/s | of peak | 2 threads: ms (ORT) | ratio | own operators' time | most time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, t, p, gmacs in rows:
        print(f"| {name} | {p['macs'] / 1e9:.2f} | {t['o1']:.2f} ({t['r1']:.2f}) | {t['o1'] / t['r1']:.2f} "
              f"| {gmacs:.1f} | {gmacs / p['peak']:.0%} | {t['o2']:.2f} ({t['r2']:.2f}) | {t['o2'] / t['r2']:.2f} "
              f"| {p['own']:.0%} | {p['top']} |")
    ratios = [t["o1"] / t["r1"] for _, t, _, _ in rows]
    if ratios:
        print(f"\nmedian ratio at 1 thread: {statistics.median(ratios):.2f}; peak {rows[0][2]['peak']:.1f} GMAC/s per core")


if __name__ == "__main__":
    main()
