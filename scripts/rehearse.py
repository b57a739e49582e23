#!/usr/bin/env python3
"""The bulk path at scale, on the local stack: N objects in a bucket ->
`submit s3://...` -> `worker` processes -> `collect --summary`, with every
job accounted for, and what it cost.

    .venv/bin/python scripts/rehearse.py --jobs 100000            # tiny model: the bookkeeping path
    .venv/bin/python scripts/rehearse.py --jobs 5000 --source prefix   # submit s3://... (listing) instead of --manifest
    .venv/bin/python scripts/rehearse.py --jobs 3000 --model bundled  # the real model on sample photos

It starts its own moto servers (one for S3, one for SQS) on free loopback ports, stages N
objects, creates a job queue with a dead-letter queue (maxReceiveCount 3,
as template.yaml) and a results queue, and runs the project's binary
(--binary, default: the release build) as a user would. With the tiny
model (3x32x32 -> global average pool -> 10 classes, made here with the
onnx package) inference is negligible, so the figures are those of the
bookkeeping: listing, SendMessageBatch, long polls, S3 GETs, result sends,
deletes, collect.

The workers and collect start first and submit runs while they consume,
as in production. Measured per process (os.wait4): CPU seconds and peak
RSS; for the run: wall time and SQS API calls, counted from the SQS server's request log (one
`POST /` line per call). Checks: the results file holds exactly one
result per object, every `ok`; the job queue and the dead-letter queue are
empty. Prints one JSON report (and writes it with --out), exits 1 if any
job is unaccounted for.
"""

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Public list prices (us-east-1): SQS standard per million requests, Lambda
# per GB-second (x86_64 / arm64) and per million requests.
SQS_PER_MILLION = 0.40
LAMBDA_GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
LAMBDA_PER_MILLION = 0.20


# The rehearsal's moto servers. moto's SQS reads a queue's every
# attribute for each message sent and each message received, and three of
# them walk every message in the queue, reading a datetime clock for each:
# 0.4 s a SendMessageBatch with 3,000 messages queued. Here those three
# counts are skipped inside SendMessage and ReceiveMessage (which read only
# ContentBasedDeduplication and MessageRetentionPeriod from them) and the
# clock is read with time.time() (the same milliseconds since the epoch);
# GetQueueAttributes and everything else is moto's own. The S3 server
# stages the objects in-process before it serves (REHEARSAL_STAGE): one
# PUT each over HTTP took moto 8 minutes for 100,000. Deletes and receives
# hold the queue's lock, as in every moto server of the project
# (scripts/moto_server.py).
MOTO_SERVER = f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'scripts')!r})\n" + """
import json, os, sys, threading, time
import moto_server
moto_server.lock_queue_changes()
import moto.sqs.models as sqs
from moto.core.utils import unix_time_millis
sqs.unix_time_millis = lambda dt=None: time.time() * 1000.0 if dt is None else unix_time_millis(dt)
quiet = threading.local()
for name in ("approximate_number_of_messages", "approximate_number_of_messages_not_visible",
             "approximate_number_of_messages_delayed"):
    count = getattr(sqs.Queue, name).fget
    setattr(sqs.Queue, name, property(lambda q, count=count: 0 if getattr(quiet, "on", False) else count(q)))
def without_counts(method):
    def run(self, *args, **kwargs):
        quiet.on = True
        try:
            return method(self, *args, **kwargs)
        finally:
            quiet.on = False
    return run
sqs.SQSBackend.send_message = without_counts(sqs.SQSBackend.send_message)
sqs.SQSBackend.receive_message = without_counts(sqs.SQSBackend.receive_message)
stage = os.environ.get("REHEARSAL_STAGE")
if stage:
    from moto.s3.models import s3_backends
    spec = json.load(open(stage))
    s3 = s3_backends["123456789012"]["aws"]
    s3.create_bucket(spec["bucket"], "us-east-1")
    bodies = [open(b, "rb").read() for b in spec["bodies"]]
    for i, key in enumerate(open(spec["keys"]).read().split()):
        s3.put_object(spec["bucket"], key, bodies[i % len(bodies)])
from moto.server import main
sys.exit(main(sys.argv[1:]))
"""
# Jobs enqueued ahead of the workers at most (about): moto's receives and
# deletes still walk the whole queue, so submit is given the manifest in
# chunks and waits for the queue to drain below this before the next.
QUEUED_AHEAD = 4_000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def png(width, height, seed):
    """A small RGB gradient PNG, different for each seed."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            rows += bytes(((x * 5 + seed * 17) % 256, (y * 7 + seed * 29) % 256, (x + y + seed * 3) % 256))

    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(rows))) + chunk(b"IEND", b"")


def tiny_model(folder):
    """A 10-class classifier on 3x32x32, with its manifest and labels."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((10, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], ["output"], transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = os.path.join(folder, "tiny.onnx")
    onnx.save(model, path)
    with open(os.path.join(folder, "tiny.txt"), "w") as f:
        f.write("".join(f"class {i}\n" for i in range(10)))
    manifest = {
        "name": "tiny",
        "version": "1",
        "input": {"name": "input", "layout": "NCHW", "height": 32, "width": 32},
        "preprocessing": {
            "resize_shorter_side": 32,
            "crop": "center",
            "interpolation": "bilinear",
            "scale": 1 / 255,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "channel_order": "RGB",
        },
        "labels": "tiny.txt",
        "output": {"name": "output", "kind": "logits"},
    }
    with open(os.path.join(folder, "tiny.json"), "w") as f:
        json.dump(manifest, f)
    return path


def sqs_calls(log_path):
    """SQS calls so far: the SQS moto server logs one `"POST / HTTP/1.1"`
    line per call."""
    with open(log_path, errors="replace") as f:
        return sum(1 for line in f if '"POST / HTTP' in line)


class Measured:
    """A child process whose CPU time (os.wait4) and peak RSS are read.

    The peak is VmHWM polled from /proc: ru_maxrss would also count the
    pages of this Python process the child had before its exec."""

    def __init__(self, name, args, env, stdout=subprocess.PIPE):
        self.name = name
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
        self.report = None
        self.hwm_kib = 0
        self.watch = threading.Thread(target=self._watch, daemon=True)
        self.watch.start()

    def _watch(self):
        path = f"/proc/{self.proc.pid}/status"
        while self.report is None:
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.hwm_kib = max(self.hwm_kib, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.1)

    def finish(self, timeout=None):
        """Waits for the process; returns (exit code, stdout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.proc.kill()
            time.sleep(0.05)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        out = self.proc.stdout.read() if self.proc.stdout else ""
        err = self.proc.stderr.read()
        self.report = {
            "process": self.name,
            "seconds": round(time.monotonic() - self.started, 2),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(self.hwm_kib / 1024, 1),
            "exit": self.proc.returncode,
        }
        if self.proc.returncode not in (0,):
            sys.stderr.write(f"{self.name} exited {self.proc.returncode}:\n{err[-4000:]}\n")
        return self.proc.returncode, out


SUBMITS = []


def submit_all(args, work, env, jobs, bucket, keys, sqs):
    """`submit` over the objects, a chunk of QUEUED_AHEAD at a time (the
    whole prefix at once with --source prefix), each chunk once the jobs
    queue holds fewer than QUEUED_AHEAD; returns (exit code, summary) each."""
    runs = []
    if args.source == "prefix":
        chunks = [[f"s3://{bucket}/r/"]]
    else:
        chunks = []
        for start in range(0, len(keys), QUEUED_AHEAD):
            manifest = os.path.join(work, f"manifest-{start}.csv")
            with open(manifest, "w") as f:
                f.write("".join(f"{bucket},{k}\n" for k in keys[start:start + QUEUED_AHEAD]))
            chunks.append(["--manifest", manifest])
    for i, source in enumerate(chunks):
        while i and queued(sqs, jobs) >= QUEUED_AHEAD:
            time.sleep(0.5)
        state = os.path.join(work, f"submit-state-{i}.json")
        run = Measured("submit", [args.binary, "submit", "--queue", jobs, "--state", state, *source], env)
        code, out = run.finish(args.timeout)
        SUBMITS.append(run.report)
        runs.append((code, json.loads(out.strip().splitlines()[-1]) if out.strip() else {}))
    return runs


def submit_process(reports):
    """The submit runs as one row: CPU added up, the highest peak."""
    return {"process": f"submit ({len(reports)} runs)",
            "seconds": round(sum(r["seconds"] for r in reports), 2),
            "cpu_seconds": round(sum(r["cpu_seconds"] for r in reports), 2),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in reports),
            "exit": max(r["exit"] for r in reports)}


def queued(sqs, queue):
    a = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--model", choices=["tiny", "bundled"], default="tiny")
    p.add_argument("--source", choices=["manifest", "prefix"], default="manifest",
                   help="submit --manifest (a CSV of the objects) or submit s3://bucket/prefix/: moto's "
                        "ListObjectsV2 re-sorts the whole bucket for every page, so listing 100,000 keys "
                        "locally takes most of an hour (S3 itself answers a page in tens of milliseconds)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--threads", type=int, default=1, help="THREADS of each worker")
    p.add_argument("--binary", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/onnx-lambda/target")),
        "release", "onnx-lambda"))
    p.add_argument("--arch", choices=["x86_64", "arm64"], default="x86_64", help="for the cost projection")
    p.add_argument("--memory-mb", type=int, default=1769, help="Lambda memory for the cost projection")
    p.add_argument("--out", help="also write the report here")
    p.add_argument("--timeout", type=int, default=3600, help="seconds for the whole run")
    args = p.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"no binary at {args.binary}: build it (cargo build --release) or give --binary")
    work = tempfile.mkdtemp(prefix="onnx-lambda-rehearsal-")
    bucket = "rehearsal"
    keys = [f"r/{i // 1000:04d}/img-{i:07d}.png" for i in range(args.jobs)]
    with open(os.path.join(work, "keys.txt"), "w") as f:
        f.write("\n".join(keys))
    bodies = sample_bodies(args.model, work)
    with open(os.path.join(work, "stage.json"), "w") as f:
        json.dump({"bucket": bucket, "keys": os.path.join(work, "keys.txt"), "bodies": bodies}, f)
    # S3 and SQS in a moto server each, as in AWS two services.
    servers, endpoints = [], {}
    t0 = time.monotonic()
    for service in ("s3", "sqs"):
        port = free_port()
        log = open(os.path.join(work, f"moto-{service}.log"), "w")
        env = dict(os.environ, REHEARSAL_STAGE=os.path.join(work, "stage.json")) if service == "s3" else None
        servers.append(subprocess.Popen([sys.executable, "-c", MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
                                        stdout=log, stderr=subprocess.STDOUT, env=env))
        endpoints[service] = f"http://127.0.0.1:{port}"
    try:
        report = rehearse(args, work, endpoints, os.path.join(work, "moto-sqs.log"), bucket, keys, t0)
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
            server.wait()
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    sys.exit(0 if report["accounted_for"] else 1)


def sample_bodies(model, work):
    """Files holding the objects' bytes, used in turn."""
    if model == "bundled":
        photos = os.path.join(ROOT, "tests", "data", "images")
        return [os.path.join(photos, n) for n in sorted(os.listdir(photos)) if n.lower().endswith((".jpg", ".png"))]
    paths = []
    for seed in range(16):
        path = os.path.join(work, f"body-{seed}.png")
        with open(path, "wb") as f:
            f.write(png(48, 36, seed))
        paths.append(path)
    return paths


def rehearse(args, work, endpoints, moto_log, bucket, keys, t0):
    import boto3
    from botocore.config import Config

    env = dict(os.environ, AWS_ENDPOINT_URL_S3=endpoints["s3"], AWS_ENDPOINT_URL_SQS=endpoints["sqs"],
               AWS_REGION="us-east-1",
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_EC2_METADATA_DISABLED="true")
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        env.pop(k, None)
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                    region_name="us-east-1")
    cfg = Config(max_pool_connections=32, retries={"max_attempts": 5})
    for endpoint in endpoints.values():
        for _ in range(1200):
            try:
                socket.create_connection(("127.0.0.1", int(endpoint.rsplit(":", 1)[1])), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
    sqs = session.client("sqs", endpoint_url=endpoints["sqs"], config=cfg)

    dlq = sqs.create_queue(QueueName="rehearsal-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    jobs = sqs.create_queue(QueueName="rehearsal-jobs", Attributes={
        "VisibilityTimeout": "60",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}),
    })["QueueUrl"]
    results = sqs.create_queue(QueueName="rehearsal-results")["QueueUrl"]

    model = tiny_model(work) if args.model == "tiny" else os.path.join(ROOT, "models", "mobilenetv2-1.0-fp32.onnx")
    staged = time.monotonic() - t0

    # The workers and collect first, then submit, as in production: the jobs
    # are consumed while they are enqueued. (moto scans a queue's every
    # message on each call, so a standing queue of 100,000 slows it to a
    # call a second; consumed as they come, the queues stay short.)
    calls0 = sqs_calls(moto_log)
    t1 = time.monotonic()
    worker_env = dict(env, THREADS=str(args.threads))
    workers = [Measured(f"worker {i + 1}", [args.binary, "--model", model, "worker", "--queue", jobs,
                                            "--results-queue", results, "--wait-seconds", "2"], worker_env)
               for i in range(args.workers)]
    results_file = os.path.join(work, "results.jsonl")
    collect = Measured("collect", [args.binary, "collect", "--queue", results, "--expect", str(args.jobs),
                                   "--out", results_file, "--timeout", "300", "--summary"], env)
    submit_runs = submit_all(args, work, env, jobs, bucket, keys, sqs)
    if any(code != 0 for code, _ in submit_runs):
        raise SystemExit(f"submit failed: {submit_runs}")
    submit_summary = {"runs": len(submit_runs),
                      "submitted": sum(s.get("submitted", 0) for _, s in submit_runs)}
    code, out = collect.finish(args.timeout)
    processed = time.monotonic() - t1
    collect_summary = json.loads(out.strip().splitlines()[0]) if out.strip() else {}
    worker_summaries = []
    for w in workers:
        w.proc.send_signal(signal.SIGTERM)
        _, wout = w.finish(120)
        lines = wout.strip().splitlines()
        worker_summaries.append(json.loads(lines[-1]) if lines else None)
    all_calls = sqs_calls(moto_log) - calls0

    # Every job accounted for: one result per object, all ok; nothing left.
    got = {}
    with open(results_file) as f:
        for line in f:
            r = json.loads(line)
            got[r["job_id"]] = r["status"]
    expected = {f"s3://{bucket}/{k}" for k in keys}
    missing = len(expected - set(got))
    unexpected = len(set(got) - expected)
    not_ok = sum(1 for s in got.values() if s != "ok")

    left = {"jobs": queued(sqs, jobs), "dead_letter": queued(sqs, dlq), "results": queued(sqs, results)}
    accounted = missing == 0 and unexpected == 0 and not_ok == 0 and left["jobs"] == 0 and left["dead_letter"] == 0

    n = args.jobs
    processes = [submit_process(SUBMITS)] + [w.report for w in workers] + [collect.report]
    worker_cpu = sum(w.report["cpu_seconds"] for w in workers)
    calls_per_image = all_calls / n
    gb = args.memory_mb / 1024
    lambda_cpu_ms = 1000 * worker_cpu / n
    cost = {
        "sqs_per_million_images": round(calls_per_image * SQS_PER_MILLION, 3),
        "lambda_requests_per_million_images": round(LAMBDA_PER_MILLION * 1e6 / 10 / 1e6, 3),
        "lambda_duration_per_million_images": round(lambda_cpu_ms / 1000 * gb * LAMBDA_GB_SECOND[args.arch] * 1e6, 3),
        "assumes": f"{args.arch}, {args.memory_mb} MB, duration = the workers' CPU time per image "
                   f"(one vCPU at 1769 MB), batches of 10 per invocation, SQS ${SQS_PER_MILLION}/M requests",
    }
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "jobs": n,
        "model": args.model,
        "source": args.source,
        "workers": args.workers,
        "threads_per_worker": args.threads,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "staging_seconds": round(staged, 1),
        "submit": submit_summary,
        "end_to_end": {"seconds": round(processed, 1), "jobs_per_second": round(n / max(processed, 1e-9), 1),
                       "sqs_calls": all_calls, "collect": collect_summary, "workers": worker_summaries},
        "sqs_calls_per_image": round(calls_per_image, 3),
        "worker_cpu_ms_per_image": round(lambda_cpu_ms, 3),
        "processes": processes,
        "results": len(got), "missing": missing, "unexpected": unexpected, "not_ok": not_ok,
        "left_in_queues": left,
        "accounted_for": accounted,
        "cost_usd": cost,
    }


if __name__ == "__main__":
    main()
