"""Prints template.yaml as JSON, read by cfn-lint's own CloudFormation YAML
decoder (short-form tags such as !Ref become {"Ref": ...}), for the
template tests in tests/library/template.rs."""

import json
import sys

from cfnlint.decode import cfn_yaml


def plain(node):
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, (bool, int, float)) or node is None:
        return node
    return str(node)


path = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "-" else "template.yaml"
print(json.dumps(plain(cfn_yaml.load(path))))
