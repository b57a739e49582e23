#!/usr/bin/env python3
"""Baseline for `onnx-lambda bench`: the usual Python pipeline on the same images.

Pillow (decode, EXIF orientation, bilinear resize of the shorter side, centre
crop) + NumPy (normalise, NCHW) + ONNX Runtime CPU, with the preprocessing of
the model manifest. Prints the same figures as `onnx-lambda bench`, so both
are measured side by side in one run:

    .venv/bin/python scripts/bench_onnxruntime.py --json tests/data/images

`--profile N` runs the network N times with ONNX Runtime's profiler on and
prints its time per operator kind, the table `onnx-lambda profile` prints for
tract (docs/performance.md, "Where inference time goes"); with `--by-node`, one row per
node, beside `onnx-lambda profile --by-node`.

`--predict FILE` classifies one file and exits: the cold-start measurement
(process start to first prediction) of scripts/compare.sh.

The Lambda cost per million images uses the same rule and prices as
`onnx-lambda bench` (src/bench.rs): CPU time per image, spread over
min(vCPUs, threads) with 1 vCPU per 1,769 MB, billed at the memory size, plus
the request price shared by the images of one invocation.

Needs: onnxruntime, pillow, numpy (`pip install -r scripts/requirements-bench.txt`).
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".pnm", ".pbm", ".pgm", ".ppm"}


def load_manifest(model_path):
    path = os.path.splitext(model_path)[0] + ".json"
    with open(path) as f:
        return json.load(f)


def preprocess(data, manifest):
    """Encoded bytes to a 1x3xHxW float32 tensor (the rule of src/preprocess.rs)."""
    import io

    pre = manifest["preprocessing"]
    h, w = manifest["input"]["height"], manifest["input"]["width"]
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    s = pre["resize_shorter_side"]
    iw, ih = img.size
    if iw <= ih:
        size = (s, round(s * ih / iw))
    else:
        size = (round(s * iw / ih), s)
    img = img.resize(size, Image.BILINEAR)
    left = (size[0] - w) // 2
    top = (size[1] - h) // 2
    img = img.crop((left, top, left + w, top + h))
    x = np.asarray(img, dtype=np.float32) * pre["scale"]
    x = (x - np.array(pre["mean"], dtype=np.float32)) / np.array(pre["std"], dtype=np.float32)
    return x.transpose(2, 0, 1)[np.newaxis].astype(np.float32)


def top_k(logits, k):
    e = np.exp(logits - logits.max())
    p = e / e.sum()
    idx = np.argsort(-p)[:k]
    return [(int(i), float(p[i])) for i in idx]


# us-east-1 list prices (aws.amazon.com/lambda/pricing); keep in step with src/bench.rs.
PRICE_GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
PRICE_PER_MILLION_REQUESTS = 0.20
MB_PER_VCPU = 1769.0
MAX_VCPUS = 6.0


def lambda_cost(cpu_ms_per_image, threads, memory_mb, arch, images_per_invocation):
    vcpus = min(memory_mb / MB_PER_VCPU, MAX_VCPUS)
    duration_s = cpu_ms_per_image / 1000 / min(vcpus, float(threads))
    per_image = duration_s * memory_mb / 1024 * PRICE_GB_SECOND[arch]
    per_image += PRICE_PER_MILLION_REQUESTS / 1e6 / images_per_invocation
    return {
        "arch": arch,
        "memory_mb": memory_mb,
        "images_per_invocation": images_per_invocation,
        "usd_per_million_images": per_image * 1e6,
    }


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def percentiles(samples):
    if not samples:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0}
    s = sorted(samples)

    def rank(p):
        return s[min(max(math.ceil(p / 100 * len(s)), 1), len(s)) - 1]

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "mean": sum(s) / len(s)}


def image_files(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(
                os.path.join(p, f) for f in os.listdir(p) if os.path.splitext(f)[1].lower() in EXTENSIONS
            )
        else:
            files.append(p)
    return files


def conv_kind(event_args):
    """The op name, with Conv split into 1x1, depthwise and full by its weight shape."""
    op = event_args.get("op_name", "?")
    if op not in ("Conv", "FusedConv"):
        return op
    try:
        weights = list(event_args["input_type_shape"][1].values())[0]
    except (KeyError, IndexError, TypeError):
        return op
    if len(weights) == 4 and weights[2:] == [1, 1]:
        return f"{op} 1x1"
    if len(weights) == 4 and weights[1] == 1:
        return f"{op} depthwise {weights[2]}x{weights[3]}"
    return f"{op} {'x'.join(map(str, weights[2:]))}"


def profile(args, opts):
    """Per-operator time from ONNX Runtime's own profiler, as a markdown table."""
    import collections
    import tempfile

    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.random.default_rng(0).uniform(-2, 2, size=shape).astype(np.float32)
    session.run(None, {inp.name: x})
    for _ in range(args.profile):
        session.run(None, {inp.name: x})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    per_op, nodes = collections.defaultdict(float), collections.defaultdict(set)
    per_node = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = conv_kind(e.get("args", {}))
            per_op[op] += e["dur"] / 1000.0
            nodes[op].add(e["name"])
            per_node[(e["name"][: -len("_kernel_time")], op)].append(e["dur"] / 1000.0)
    runs = args.profile + 1
    print(f"ONNX Runtime {ort.__version__}, {opts.intra_op_num_threads or 'default'} intra-op threads, {args.profile} runs\n")
    if args.by_node:
        # Medians, as `onnx-lambda profile --by-node`; ONNX Runtime renames
        # a Conv it moves to its blocked layout `<output>_nchwc`, so the
        # number matches our row's `<output>_Conv`.
        print("| node | operator | ms per image |")
        print("| --- | --- | ---: |")
        for (name, op), ms in sorted(per_node.items(), key=lambda kv: -statistics.median(kv[1])):
            print(f"| `{name}` | `{op}` | {statistics.median(ms):.3f} |")
        return
    total = sum(per_op.values()) / runs
    print("| operator | nodes | ms per image | share |")
    print("| --- | ---: | ---: | ---: |")
    for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1]):
        print(f"| `{op}` | {len(nodes[op])} | {ms / runs:.2f} | {100 * ms / runs / total:.0f}% |")
    print(f"| **total** | {sum(len(n) for n in nodes.values())} | {total:.2f} | 100% |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", default=[os.path.join(ROOT, "tests/data/images")])
    ap.add_argument("--model", default=os.path.join(ROOT, "models/mobilenetv2-1.0-fp32.onnx"))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: one per core)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--predict", metavar="FILE", help="classify one file, print its top-5, exit")
    ap.add_argument("--profile", type=int, metavar="N", help="print ONNX Runtime's per-operator times over N runs, exit")
    ap.add_argument("--by-node", action="store_true", help="with --profile: one row per node (median), not per operator kind")
    ap.add_argument("--arch", choices=sorted(PRICE_GB_SECOND), default="x86_64")
    ap.add_argument("--memory-mb", type=float, default=float(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", MB_PER_VCPU)))
    args = ap.parse_args()

    started = time.perf_counter()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    if args.profile:
        return profile(args, opts)
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    manifest = load_manifest(args.model)
    load_ms = (time.perf_counter() - started) * 1000
    input_name = session.get_inputs()[0].name
    if args.predict:
        with open(args.predict, "rb") as f:
            x = preprocess(f.read(), manifest)
        print(json.dumps(top_k(session.run(None, {input_name: x})[0][0], 5)))
        return
    images = [open(f, "rb").read() for f in image_files(args.paths)]
    if not images:
        sys.exit("no images found")

    stages = {"preprocess": 0.0, "inference": 0.0}

    def classify(data):
        t = time.perf_counter()
        x = preprocess(data, manifest)
        t1 = time.perf_counter()
        logits = session.run(None, {input_name: x})[0][0]
        t2 = time.perf_counter()
        top_k(logits, 5)
        stages["preprocess"] += (t1 - t) * 1000
        stages["inference"] += (t2 - t1) * 1000
        return (time.perf_counter() - t) * 1000

    def batches(passes):
        # Full batches across passes, as `onnx-lambda bench` makes them.
        flat = images * passes
        return [flat[i : i + args.batch_size] for i in range(0, len(flat), args.batch_size)]

    for b in batches(args.warmup):
        for data in b:
            classify(data)
    latencies, batch_latencies = [], []
    stages.update(preprocess=0.0, inference=0.0)
    cpu = cpu_seconds()
    wall = time.perf_counter()
    for b in batches(args.iterations):
        t = time.perf_counter()
        latencies += [classify(data) for data in b]
        batch_latencies.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - wall
    cpu_ms_per_image = (cpu_seconds() - cpu) * 1000 / max(len(latencies), 1)
    threads = args.threads or os.cpu_count()
    report = {
        "model": f"{manifest['name']} {manifest['version']} (onnxruntime {ort.__version__})",
        "images": len(images),
        "classified": len(latencies),
        "errors": 0,
        "batch_size": args.batch_size,
        "iterations": args.iterations,
        "images_per_second": len(latencies) / wall,
        "latency_ms": percentiles(latencies),
        "batch_latency_ms": percentiles(batch_latencies),
        "stage_mean_ms": {k: v / max(len(latencies), 1) for k, v in stages.items()},
        "threads": threads,
        "cpu_ms_per_image": cpu_ms_per_image,
        "lambda_cost": lambda_cost(cpu_ms_per_image, threads, args.memory_mb, args.arch, args.batch_size),
        "model_load_ms": load_ms,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:18} {v}")


if __name__ == "__main__":
    main()
