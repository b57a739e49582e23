#!/usr/bin/env python3
"""Regenerates the HTTP events in events/ from real event shapes.

Each event POSTs the same small JPEG (tests/data/images/chelsea.png scaled to
160 px, CC0) to /predict?top_k=3 as a base64 body, the way each source
delivers binary bodies. The shapes come from the aws-lambda-rust-runtime
fixtures (aws_lambda_events/src/fixtures, Apache-2.0/MIT) and from the AWS
Lambda docs for Function URLs (payload format 2.0). Run with a Python that
has Pillow, passing the fixtures folder:

    python scripts/make_events.py ~/.cargo/registry/src/*/aws_lambda_events-*/src/fixtures
"""
import base64
import copy
import io
import json
import os
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def image_b64():
    im = Image.open(os.path.join(ROOT, "tests/data/images/chelsea.png")).convert("RGB")
    im.thumbnail((160, 160))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def write(name, event):
    with open(os.path.join(ROOT, "events", name), "w") as f:
        json.dump(event, f, indent=2)
        f.write("\n")


def main(fixtures):
    body = image_b64()
    load = lambda f: json.load(open(os.path.join(fixtures, f)))

    rest = load("example-apigw-request.json")
    rest.update(resource="/predict", path="/predict", httpMethod="POST", body=body, isBase64Encoded=True,
                queryStringParameters={"top_k": "3"}, multiValueQueryStringParameters={"top_k": ["3"]},
                pathParameters=None, stageVariables=None)
    rest["headers"] = {"Content-Type": "image/jpeg", "Host": "abc123.execute-api.us-east-1.amazonaws.com"}
    rest["multiValueHeaders"] = {k: [v] for k, v in rest["headers"].items()}
    rest["requestContext"].update(resourcePath="/predict", httpMethod="POST", path="/prod/predict")
    write("apigw-rest-predict.json", rest)

    http = load("example-apigw-v2-request-no-authorizer.json")
    http.update(routeKey="POST /predict", rawPath="/predict", rawQueryString="top_k=3",
                queryStringParameters={"top_k": "3"}, body=body, isBase64Encoded=True)
    http["headers"] = {"content-type": "image/jpeg", "host": "abc123.execute-api.us-east-1.amazonaws.com"}
    http["requestContext"]["http"].update(method="POST", path="/predict")
    http["requestContext"]["routeKey"] = "POST /predict"
    http.pop("cookies", None)
    write("apigw-http-predict.json", http)

    url = copy.deepcopy(http)
    url.update(routeKey="$default")
    url["headers"]["host"] = "abcdefghijklmnopqrstuvwxyz012345.lambda-url.us-east-1.on.aws"
    url["requestContext"].update(routeKey="$default", stage="$default", apiId="abcdefghijklmnopqrstuvwxyz012345",
                                 domainName="abcdefghijklmnopqrstuvwxyz012345.lambda-url.us-east-1.on.aws",
                                 domainPrefix="abcdefghijklmnopqrstuvwxyz012345")
    url["requestContext"].pop("authentication", None)
    write("function-url-predict.json", url)

    alb = load("example-alb-lambda-target-request-multivalue-headers.json")
    alb.update(httpMethod="POST", path="/predict", body=body, isBase64Encoded=True,
               multiValueQueryStringParameters={"top_k": ["3"]})
    alb["multiValueHeaders"] = {"content-type": ["image/jpeg"], "host": ["lambda-alb-123578498.us-east-1.elb.amazonaws.com"]}
    write("alb-predict.json", alb)


if __name__ == "__main__":
    main(sys.argv[1])
