"""Sets up a moto server as the template's deployment would leave an AWS
account, then turns on moto's IAM enforcement, for tests/aws/iam.rs.

Reads template.yaml (cfn-lint's decoder), resolves the intrinsic functions
its two roles use (Ref, Fn::Sub, Fn::GetAtt, Fn::If, Fn::Select, Fn::Split)
with the given parameters, creates the buckets, objects and queues the
roles name, creates each role with exactly its template policies and
assumes it. Prints JSON: every name, the roles' temporary credentials and
an admin user's keys (for the test's own set-up and checks).

    iam_stack.py ENDPOINT TEMPLATE MODEL_DIR IMAGE [--without SUFFIX]

--without SUFFIX drops every granted resource ending in SUFFIX from the
roles: a test that a grant is needed removes it this way.

moto names a batch call's IAM action after the call (sqs:SendMessageBatch),
where AWS authorises it with the single call's action (sqs:SendMessage);
the policies given to moto say both, so moto enforces AWS's semantics.
"""

import json
import os
import sys
import urllib.request
import uuid

import boto3
from cfnlint.decode import cfn_yaml

ACCOUNT = "123456789012"
REGION = "us-east-1"
BATCH_ALIASES = {
    "sqs:SendMessage": "sqs:SendMessageBatch",
    "sqs:DeleteMessage": "sqs:DeleteMessageBatch",
    "sqs:ChangeMessageVisibility": "sqs:ChangeMessageVisibilityBatch",
}


def plain(node):
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node if isinstance(node, (bool, int, float)) or node is None else str(node)


class Resolver:
    NO_VALUE = object()

    def __init__(self, template, params, attributes):
        self.params = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                       "AWS::StackName": "onnx-lambda"}
        for name, p in template["Parameters"].items():
            self.params[name] = str(params.get(name, p.get("Default", "")))
        self.attributes = attributes
        self.conditions = template.get("Conditions", {})

    def condition(self, name):
        return self.value(self.conditions[name])

    def sub(self, text, local):
        out, rest = "", text
        while "${" in rest:
            before, _, after = rest.partition("${")
            name, _, rest = after.partition("}")
            out += before
            if name in local:
                out += str(local[name])
            elif name in self.params:
                out += self.params[name]
            else:
                out += self.attributes[name]
        return out + rest

    def value(self, node):
        if isinstance(node, list):
            return [v for v in (self.value(n) for n in node) if v is not Resolver.NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Ref":
                return Resolver.NO_VALUE if arg == "AWS::NoValue" else self.params[arg]
            if fn == "Fn::Sub":
                if isinstance(arg, str):
                    return self.sub(arg, {})
                return self.sub(arg[0], {k: self.value(v) for k, v in arg[1].items()})
            if fn == "Fn::GetAtt":
                return self.attributes[".".join(arg) if isinstance(arg, list) else arg]
            if fn == "Fn::If":
                return self.value(arg[1] if self.condition(arg[0]) else arg[2])
            if fn == "Fn::Select":
                return self.value(arg[1])[int(self.value(arg[0]))]
            if fn == "Fn::Split":
                return self.value(arg[1]).split(arg[0])
            if fn == "Fn::Not":
                return not self.value(arg[0])
            if fn == "Fn::Equals":
                return self.value(arg[0]) == self.value(arg[1])
            if fn.startswith("Fn::"):
                raise SystemExit(f"iam_stack.py: {fn} is not resolved here; teach it")
        return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v is not Resolver.NO_VALUE}


def for_moto(document, without):
    for st in document["Statement"]:
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if without:
            resources = [r for r in resources if not r.endswith(without)]
        st["Resource"] = resources
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        st["Action"] = actions + [BATCH_ALIASES[a] for a in actions if a in BATCH_ALIASES]
    document["Statement"] = [st for st in document["Statement"] if st["Resource"]]
    return document


def main():
    endpoint, template_path, model_dir, image = sys.argv[1:5]
    without = sys.argv[sys.argv.index("--without") + 1] if "--without" in sys.argv else None
    template = plain(cfn_yaml.load(template_path))
    run = uuid.uuid4().hex[:8]
    kw = dict(endpoint_url=endpoint, region_name=REGION)
    anon = dict(aws_access_key_id="setup", aws_secret_access_key="setup", **kw)

    # Until enforcement is on, moto takes any signature.
    iam = boto3.client("iam", **anon)
    iam.create_user(UserName="admin")
    iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="admin")["AccessKey"]
    admin = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}

    names = {
        "model_bucket": f"models-{run}", "input_bucket": f"inputs-{run}", "other_bucket": f"other-{run}",
        "model_key": "models/mobilenetv2-1.0-fp32.onnx", "input_prefix": "in/",
    }
    s3 = boto3.client("s3", **anon)
    for b in ("model_bucket", "input_bucket", "other_bucket"):
        s3.create_bucket(Bucket=names[b])
    for name in sorted(os.listdir(model_dir)):
        if name.endswith((".onnx", ".json", ".txt")):
            with open(os.path.join(model_dir, name), "rb") as f:
                s3.put_object(Bucket=names["model_bucket"], Key=f"models/{name}", Body=f.read())
    with open(image, "rb") as f:
        photo = f.read()
    for bucket, key in [("input_bucket", "in/photo.png"), ("input_bucket", "private/photo.png"),
                        ("other_bucket", "in/photo.png")]:
        s3.put_object(Bucket=names[bucket], Key=key, Body=photo)
    sqs = boto3.client("sqs", **anon)
    queues = {}
    for q in ("JobsQueue", "ResultsQueue", "JobsDeadLetterQueue"):
        url = sqs.create_queue(QueueName=f"{q}-{run}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queues[q] = {"url": url, "arn": arn}
    names["queues"] = {q: v["url"] for q, v in queues.items()}

    attributes = {f"{q}.Arn": v["arn"] for q, v in queues.items()}
    for logs in ("PredictLogs", "BatchLogs"):
        attributes[f"{logs}.Arn"] = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{logs}-{run}"
    params = {"ModelBucket": names["model_bucket"], "ModelKey": names["model_key"],
              "InputBucket": names["input_bucket"], "InputPrefix": names["input_prefix"]}
    resolve = Resolver(template, params, attributes)
    names["environment"] = resolve.value(template["Globals"]["Function"]["Environment"]["Variables"])

    sts = boto3.client("sts", **anon)
    roles = {}
    for role in ("PredictRole", "BatchRole"):
        props = template["Resources"][role]["Properties"]
        role_name = f"{role}-{run}"
        arn = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(
            props["AssumeRolePolicyDocument"]))["Role"]["Arn"]
        granted = []
        for policy in resolve.value(props["Policies"]):
            document = for_moto(policy["PolicyDocument"], without)
            granted.append({"name": policy["PolicyName"], "document": document})
            iam.put_role_policy(RoleName=role_name, PolicyName=policy["PolicyName"],
                                PolicyDocument=json.dumps(document))
        creds = sts.assume_role(RoleArn=arn, RoleSessionName="lambda")["Credentials"]
        roles[role] = {"access_key_id": creds["AccessKeyId"], "secret_access_key": creds["SecretAccessKey"],
                       "session_token": creds["SessionToken"], "policies": granted}

    # Enforcement on: every request from here is signed and authorised.
    urllib.request.urlopen(urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}))
    print(json.dumps({"admin": admin, "roles": roles, **names}))


if __name__ == "__main__":
    main()
