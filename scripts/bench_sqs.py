#!/usr/bin/env python3
"""Jobs/s end to end through SQS + S3 (moto), for worker batch sizes 1 and 10,
measured in one run. A benchmark, not a test.

    .venv/bin/python scripts/bench_sqs.py [--jobs 200] [--bin target/release/onnx-lambda]

Starts its own moto server on a free port, uploads the sample photos, and for
each batch size enqueues N jobs (S3 references, round robin over the photos),
starts `onnx-lambda worker --batch-size B`, and times until
`onnx-lambda collect --expect N` has every result.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "grace_hopper.jpg", "china.jpg"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release/onnx-lambda"))
    args = ap.parse_args()

    port = free_port()
    moto = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts/moto_server.py"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="x",
               AWS_SECRET_ACCESS_KEY="x", AWS_EC2_METADATA_DISABLED="true", RUST_LOG="warn")
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        s3, sqs = boto3.client("s3", **kw), boto3.client("sqs", **kw)
        s3.create_bucket(Bucket="bench")
        for p in PHOTOS:
            s3.upload_file(os.path.join(ROOT, "tests/data/images", p), "bench", f"in/{p}")
        report = {"jobs": args.jobs, "cores": os.cpu_count()}
        for batch in (1, 10):
            jobs = sqs.create_queue(QueueName=f"jobs-{batch}")["QueueUrl"]
            results = sqs.create_queue(QueueName=f"results-{batch}")["QueueUrl"]
            for start in range(0, args.jobs, 10):
                entries = [{"Id": str(i), "MessageBody": json.dumps(
                    {"job_id": f"j{start + i}", "image": {"s3_uri": f"s3://bench/in/{PHOTOS[(start + i) % 5]}"}})}
                    for i in range(min(10, args.jobs - start))]
                sqs.send_message_batch(QueueUrl=jobs, Entries=entries)
            t0 = time.perf_counter()
            worker = subprocess.Popen([args.bin, "worker", "--queue", jobs, "--results-queue", results,
                                       "--batch-size", str(batch), "--wait-seconds", "1"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out = subprocess.run([args.bin, "collect", "--queue", results, "--expect", str(args.jobs),
                                  "--out", "/dev/null", "--timeout", "60"], env=env, capture_output=True, text=True)
            elapsed = time.perf_counter() - t0
            worker.terminate()
            worker.wait()
            summary = json.loads(out.stdout)
            report[f"batch_{batch}"] = {"jobs_per_second": round(args.jobs / elapsed, 2), "seconds": round(elapsed, 2),
                                        "results": summary["results"], "ok": summary["ok"]}
        report["batch_10_vs_1"] = round(report["batch_10"]["jobs_per_second"] / report["batch_1"]["jobs_per_second"], 2)
        print(json.dumps(report))
    finally:
        moto.terminate()


if __name__ == "__main__":
    main()
