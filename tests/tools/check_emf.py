"""Checks CloudWatch Embedded Metric Format lines against the EMF specification.

Reads a log stream (a file, or stdin with "-"), takes every line that is a
JSON object with an "_aws" member, and validates it:
- with the specification's JSON schema (below, after AWS's "Specification:
  Embedded metric format", CloudWatch user guide), using jsonschema;
- with the rules the schema cannot say: every metric a directive declares and
  every dimension it names is a member of the root; metric values are
  numbers, or arrays of at most 100 numbers; dimension values are strings; a
  line is at most 1 MB.

Prints {"lines": [...]} (each EMF line, parsed) as JSON and exits 0, or
prints what is wrong and exits 1. Used by tests/lambda/lambda_watch.rs.
"""

import json
import sys

import jsonschema

UNITS = [
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes",
    "Gigabytes", "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits",
    "Percent", "Count", "Bytes/Second", "Kilobytes/Second", "Megabytes/Second",
    "Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second",
    "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
]

SCHEMA = {
    "type": "object",
    "title": "Root Node",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "type": "object",
            "title": "Metadata",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "properties": {
                "Timestamp": {"type": "integer", "minimum": 0},
                "LogGroupName": {"type": "string", "minLength": 1},
                "CloudWatchMetrics": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "title": "MetricDirective",
                        "required": ["Namespace", "Dimensions", "Metrics"],
                        "additionalProperties": False,
                        "properties": {
                            "Namespace": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 1024,
                                "pattern": "^[^:].*$",
                            },
                            "Dimensions": {
                                "type": "array",
                                "items": {
                                    "type": "array",
                                    "title": "DimensionSet",
                                    "minItems": 0,
                                    "maxItems": 30,
                                    "items": {"type": "string", "minLength": 1, "maxLength": 250},
                                },
                            },
                            "Metrics": {
                                "type": "array",
                                "maxItems": 100,
                                "items": {
                                    "type": "object",
                                    "title": "MetricDefinition",
                                    "required": ["Name"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "Name": {"type": "string", "minLength": 1, "maxLength": 1024},
                                        "Unit": {"type": "string", "enum": UNITS},
                                        "StorageResolution": {"type": "integer", "enum": [1, 60]},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def problems(line, doc):
    if len(line.encode()) > 1024 * 1024:
        yield "the line is over 1 MB"
    for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(doc):
        yield f"schema: {e.message} at {list(e.absolute_path)}"
    for directive in doc.get("_aws", {}).get("CloudWatchMetrics", []):
        for dims in directive.get("Dimensions", []):
            for d in dims:
                if not isinstance(doc.get(d), str):
                    yield f"dimension {d!r} is not a string member of the root"
        for m in directive.get("Metrics", []):
            name = m.get("Name")
            v = doc.get(name)
            ok = is_number(v) or (
                isinstance(v, list) and 0 < len(v) <= 100 and all(is_number(x) for x in v)
            )
            if not ok:
                yield f"metric {name!r} has no number or array of up to 100 numbers: {v!r}"


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "-"
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    lines, bad = [], []
    for raw in text.splitlines():
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(doc, dict) or "_aws" not in doc:
            continue
        found = list(problems(raw, doc))
        if found:
            bad.append({"line": raw, "problems": found})
        lines.append(doc)
    if bad:
        print(json.dumps(bad, indent=2))
        sys.exit(1)
    print(json.dumps({"lines": lines}))


if __name__ == "__main__":
    main()
