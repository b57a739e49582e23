"""Parses a Prometheus text-format body with prometheus_client's parser.

Reads the body from a file (or stdin with "-") and prints, as JSON, every
family: {"name": {"type": ..., "samples": [[sample_name, labels, value], ...]}}.
A body the parser rejects makes it exit 1 with the parser's error. Used by
the /metrics tests (tests/servers/metrics.rs), so they check the format with a real
parser rather than with string matching.
"""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "-"
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    out = {}
    try:
        for family in text_string_to_metric_families(text):
            out[family.name] = {
                "type": family.type,
                "samples": [[s.name, s.labels, s.value] for s in family.samples],
            }
    except Exception as e:  # the parser raises ValueError and others
        print(f"not valid Prometheus text format: {e!r}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
