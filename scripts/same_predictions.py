#!/usr/bin/env python3
"""Two `onnx-lambda predict` outputs (JSON Lines) name the same files, with
the same top-k classes in the same order and probabilities within a
tolerance: scripts/arm64.sh compares the aarch64 build with the x86_64 one.

    same_predictions.py A.jsonl B.jsonl [TOLERANCE]
"""
import json
import sys


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    a, b = read(sys.argv[1]), read(sys.argv[2])
    tolerance = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
    assert a, f"{sys.argv[1]}: no predictions"
    assert [r["file"] for r in a] == [r["file"] for r in b], "different files"
    worst = 0.0
    for x, y in zip(a, b):
        assert "predictions" in x and "predictions" in y, f"{x['file']}: {x} / {y}"
        ix = [p["index"] for p in x["predictions"]]
        iy = [p["index"] for p in y["predictions"]]
        assert ix == iy, f"{x['file']}: top-k {ix} against {iy}"
        for p, q in zip(x["predictions"], y["predictions"]):
            diff = abs(p["probability"] - q["probability"])
            worst = max(worst, diff)
            assert diff <= tolerance, f"{x['file']}: class {p['index']}: {p} against {q}"
    print(f"{len(a)} files: the same top-{len(a[0]['predictions'])}, "
          f"probabilities within {worst:.2e} (tolerance {tolerance:g})")


if __name__ == "__main__":
    main()
