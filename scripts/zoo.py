#!/usr/bin/env python3
"""The model zoo: real ImageNet classifier architectures as ONNX files with
seeded random weights, written into a cache directory (not the repository).

    python3 scripts/zoo.py [--out DIR] [--models a,b,...] [--list]

For each model NAME it writes DIR/NAME.onnx (opset 17, batch 1, 3x224x224,
1000 logits), DIR/NAME.input.f32 (a seeded input tensor, little-endian
float32) and DIR/NAME.ort.f32 (ONNX Runtime's logits for it, one thread),
plus DIR/index.json (every model in DIR: name, family, parameters,
operator types). DIR
defaults to ~/.cache/onnx-lambda/zoo. A model already written with the
same generator version is kept.

The graphs follow torchvision's definitions (layer counts, widths, kernel
sizes, strides, groups, activations, squeeze-and-excite, channel shuffle,
concatenations, LayerNorm) as `torch.onnx.export` lays them out in eval
mode: BatchNorm folded into the convolution before it, and standalone where
it comes first (DenseNet's pre-activation). They are built with the `onnx`
package alone, so no PyTorch is needed. The weights are random (He
initialisation): the point is the operators and their shapes, not the
predictions.
"""
import argparse
import hashlib
import json
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VERSION = 1
OPSET = 17


class Net:
    """A graph under construction: each method adds nodes and returns the
    name of its output, with its channel count tracked alongside."""

    def __init__(self, name, seed):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def fresh(self, kind):
        self.n += 1
        return f"{kind}_{self.n}"

    def const(self, value, kind="c"):
        name = self.fresh(kind)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type, inputs, **attrs):
        out = self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(self, x, cin, cout, k, stride=1, pad=None, groups=1, dilation=1, bias=True):
        kh, kw = (k, k) if isinstance(k, int) else k
        if pad is None:
            pad = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
        elif isinstance(pad, int):
            pad = (pad, pad)
        fan_in = cin // groups * kh * kw
        w = self.rng.normal(0, math.sqrt(2.0 / fan_in), (cout, cin // groups, kh, kw)).astype(np.float32)
        inputs = [x, self.const(w, "w")]
        if bias:
            inputs.append(self.const(self.rng.normal(0, 0.05, cout).astype(np.float32), "b"))
        return self.op("Conv", inputs, kernel_shape=[kh, kw], strides=[stride, stride],
                       pads=[pad[0], pad[1], pad[0], pad[1]], group=groups,
                       dilations=[dilation, dilation])

    def bn(self, x, c):
        scale = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        shift = self.rng.normal(0, 0.1, c).astype(np.float32)
        mean = self.rng.normal(0, 0.1, c).astype(np.float32)
        var = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        return self.op("BatchNormalization", [x] + [self.const(v) for v in (scale, shift, mean, var)],
                       epsilon=1e-5)

    def act(self, x, kind):
        if kind == "relu":
            return self.op("Relu", [x])
        if kind == "relu6":
            return self.op("Clip", [x, self.const(np.float32(0)), self.const(np.float32(6))])
        if kind == "hswish":
            return self.op("HardSwish", [x])
        if kind == "hsigmoid":
            return self.op("HardSigmoid", [x], alpha=1 / 6, beta=0.5)
        if kind == "sigmoid":
            return self.op("Sigmoid", [x])
        if kind == "silu":
            return self.op("Mul", [x, self.op("Sigmoid", [x])])
        if kind == "gelu":
            # torch.onnx.export at opset 17: x * 0.5 * (1 + erf(x / sqrt 2)).
            e = self.op("Erf", [self.op("Div", [x, self.const(np.float32(math.sqrt(2)))])])
            half = self.op("Mul", [x, self.const(np.float32(0.5))])
            return self.op("Mul", [half, self.op("Add", [e, self.const(np.float32(1))])])
        assert kind is None, kind
        return x

    def cba(self, x, cin, cout, k, stride=1, groups=1, act="relu", pad=None):
        """Conv with BatchNorm folded in (a bias), then the activation."""
        return self.act(self.conv(x, cin, cout, k, stride, pad=pad, groups=groups), act)

    def se(self, x, c, squeezed, act="relu", gate="sigmoid"):
        s = self.op("GlobalAveragePool", [x])
        s = self.act(self.conv(s, c, squeezed, 1), act)
        s = self.act(self.conv(s, squeezed, c, 1), gate)
        return self.op("Mul", [x, s])

    def pool(self, x, kind, k, stride, pad=0, ceil=0):
        return self.op(kind, [x], kernel_shape=[k, k], strides=[stride, stride],
                       pads=[pad] * 4, ceil_mode=ceil)

    def residual(self, x, y, cin, cout, stride):
        """ReLU(y + x), x through a strided 1x1 projection when its shape differs."""
        skip = x if stride == 1 and cin == cout else self.cba(x, cin, cout, 1, stride, act=None)
        return self.act(self.op("Add", [y, skip]), "relu")

    def gap_flat(self, x):
        return self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)

    def mean_flat(self, x):
        # torch's x.mean([2, 3]) (ShuffleNet, MnasNet).
        return self.op("ReduceMean", [x], axes=[2, 3], keepdims=0)

    def linear(self, x, cin, cout):
        w = self.rng.normal(0, math.sqrt(1.0 / cin), (cout, cin)).astype(np.float32)
        b = self.rng.normal(0, 0.05, cout).astype(np.float32)
        return self.op("Gemm", [x, self.const(w, "w"), self.const(b, "b")], transB=1)

    def model(self, out):
        graph = helper.make_graph(
            self.nodes, self.name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 1000])],
            self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnx-lambda scripts/zoo.py")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def resnet(name, blocks, bottleneck):
    n = Net(name, 1)
    x = n.cba("input", 3, 64, 7, 2)
    x = n.pool(x, "MaxPool", 3, 2, 1)
    cin = 64
    for stage, (count, width) in enumerate(zip(blocks, [64, 128, 256, 512])):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            cout = width * 4 if bottleneck else width
            if bottleneck:
                y = n.cba(x, cin, width, 1)
                y = n.cba(y, width, width, 3, stride)
                y = n.cba(y, width, cout, 1, act=None)
            else:
                y = n.cba(x, cin, width, 3, stride)
                y = n.cba(y, width, width, 3, act=None)
            x = n.residual(x, y, cin, cout, stride)
            cin = cout
    return n.model(n.linear(n.gap_flat(x), cin, 1000))


def squeezenet1_1():
    n = Net("squeezenet1_1", 2)
    x = n.cba("input", 3, 64, 3, 2, pad=0)
    x = n.pool(x, "MaxPool", 3, 2, ceil=1)
    cin = 64

    def fire(x, cin, squeeze, expand):
        s = n.cba(x, cin, squeeze, 1)
        return n.op("Concat", [n.cba(s, squeeze, expand, 1), n.cba(s, squeeze, expand, 3)], axis=1)

    for i, (sq, ex) in enumerate([(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]):
        x = fire(x, cin, sq, ex)
        cin = 2 * ex
        if i in (1, 3):
            x = n.pool(x, "MaxPool", 3, 2, ceil=1)
    x = n.cba(x, cin, 1000, 1)
    return n.model(n.gap_flat(x))


MOBILENET_V3 = {
    # kernel, expanded, out, se, activation, stride (torchvision's table)
    "mobilenet_v3_small": ([
        (3, 16, 16, 1, "relu", 2), (3, 72, 24, 0, "relu", 2), (3, 88, 24, 0, "relu", 1),
        (5, 96, 40, 1, "hswish", 2), (5, 240, 40, 1, "hswish", 1), (5, 240, 40, 1, "hswish", 1),
        (5, 120, 48, 1, "hswish", 1), (5, 144, 48, 1, "hswish", 1), (5, 288, 96, 1, "hswish", 2),
        (5, 576, 96, 1, "hswish", 1), (5, 576, 96, 1, "hswish", 1)], 576, 1024),
    "mobilenet_v3_large": ([
        (3, 16, 16, 0, "relu", 1), (3, 64, 24, 0, "relu", 2), (3, 72, 24, 0, "relu", 1),
        (5, 72, 40, 1, "relu", 2), (5, 120, 40, 1, "relu", 1), (5, 120, 40, 1, "relu", 1),
        (3, 240, 80, 0, "hswish", 2), (3, 200, 80, 0, "hswish", 1), (3, 184, 80, 0, "hswish", 1),
        (3, 184, 80, 0, "hswish", 1), (3, 480, 112, 1, "hswish", 1), (3, 672, 112, 1, "hswish", 1),
        (5, 672, 160, 1, "hswish", 2), (5, 960, 160, 1, "hswish", 1), (5, 960, 160, 1, "hswish", 1)], 960, 1280),
}


def divisible(v, d=8):
    return max(d, int(v + d / 2) // d * d)


def mobilenet_v3(name):
    table, last, hidden = MOBILENET_V3[name]
    n = Net(name, 3)
    x = n.cba("input", 3, 16, 3, 2, act="hswish")
    cin = 16
    for k, exp, out, se, act, stride in table:
        y = x if exp == cin else n.cba(x, cin, exp, 1, act=act)
        y = n.cba(y, exp, exp, k, stride, groups=exp, act=act)
        if se:
            y = n.se(y, exp, divisible(exp // 4), "relu", "hsigmoid")
        y = n.cba(y, exp, out, 1, act=None)
        x = n.op("Add", [y, x]) if stride == 1 and cin == out else y
        cin = out
    x = n.cba(x, cin, last, 1, act="hswish")
    x = n.act(n.linear(n.gap_flat(x), last, hidden), "hswish")
    return n.model(n.linear(x, hidden, 1000))


def inverted_residuals(n, x, cin, stages, act, se_ratio):
    """MBConv stages: (expansion, kernel, out, repeats, stride)."""
    for exp_ratio, k, out, repeats, stride in stages:
        for i in range(repeats):
            s = stride if i == 0 else 1
            exp = cin * exp_ratio
            y = x if exp_ratio == 1 else n.cba(x, cin, exp, 1, act=act)
            y = n.cba(y, exp, exp, k, s, groups=exp, act=act)
            if se_ratio:
                y = n.se(y, exp, max(1, int(cin * se_ratio)), act, "sigmoid")
            y = n.cba(y, exp, out, 1, act=None)
            x = n.op("Add", [y, x]) if s == 1 and cin == out else y
            cin = out
    return x, cin


def efficientnet_b0():
    n = Net("efficientnet_b0", 4)
    x = n.cba("input", 3, 32, 3, 2, act="silu")
    stages = [(1, 3, 16, 1, 1), (6, 3, 24, 2, 2), (6, 5, 40, 2, 2), (6, 3, 80, 3, 2),
              (6, 5, 112, 3, 1), (6, 5, 192, 4, 2), (6, 3, 320, 1, 1)]
    x, cin = inverted_residuals(n, x, 32, stages, "silu", 0.25)
    x = n.cba(x, cin, 1280, 1, act="silu")
    return n.model(n.linear(n.gap_flat(x), 1280, 1000))


def mnasnet1_0():
    n = Net("mnasnet1_0", 5)
    x = n.cba("input", 3, 32, 3, 2)
    x = n.cba(x, 32, 32, 3, groups=32)
    x = n.cba(x, 32, 16, 1, act=None)
    stages = [(3, 3, 24, 3, 2), (3, 5, 40, 3, 2), (6, 5, 80, 3, 2), (6, 3, 96, 2, 1),
              (6, 5, 192, 4, 2), (6, 3, 320, 1, 1)]
    x, cin = inverted_residuals(n, x, 16, stages, "relu", 0)
    x = n.cba(x, cin, 1280, 1)
    return n.model(n.linear(n.mean_flat(x), 1280, 1000))


def shufflenet_v2_x1_0():
    n = Net("shufflenet_v2_x1_0", 6)
    x = n.cba("input", 3, 24, 3, 2)
    x = n.pool(x, "MaxPool", 3, 2, 1)
    cin, size = 24, 56

    def shuffle(x, c, size):
        shape = n.const(np.array([1, 2, c // 2, size, size], np.int64))
        x = n.op("Transpose", [n.op("Reshape", [x, shape])], perm=[0, 2, 1, 3, 4])
        return n.op("Reshape", [x, n.const(np.array([1, c, size, size], np.int64))])

    for repeats, out in zip([4, 8, 4], [116, 232, 464]):
        half = out // 2
        for i in range(repeats):
            if i == 0:
                a = n.cba(x, cin, cin, 3, 2, groups=cin, act=None)
                a = n.cba(a, cin, half, 1)
                b = n.cba(x, cin, half, 1)
                size //= 2
            else:
                a = n.fresh("split")
                b = n.fresh("split")
                n.nodes.append(helper.make_node("Split", [x, n.const(np.array([half, half], np.int64))], [a, b], axis=1))
                b = n.cba(b, half, half, 1)
            b = n.cba(b, half, half, 3, 2 if i == 0 else 1, groups=half, act=None)
            b = n.cba(b, half, half, 1)
            x = shuffle(n.op("Concat", [a, b], axis=1), out, size)
            cin = out
    x = n.cba(x, cin, 1024, 1)
    return n.model(n.linear(n.mean_flat(x), 1024, 1000))


def regnet_y_400mf():
    n = Net("regnet_y_400mf", 7)
    x = n.cba("input", 3, 32, 3, 2)
    cin = 32
    for depth, width in zip([1, 3, 6, 6], [48, 104, 208, 440]):
        for i in range(depth):
            stride = 2 if i == 0 else 1
            y = n.cba(x, cin, width, 1)
            y = n.cba(y, width, width, 3, stride, groups=width // 8)
            y = n.se(y, width, int(round(cin * 0.25)), "relu", "sigmoid")
            y = n.cba(y, width, width, 1, act=None)
            x = n.residual(x, y, cin, width, stride)
            cin = width
    return n.model(n.linear(n.gap_flat(x), cin, 1000))


def densenet121():
    n = Net("densenet121", 8)
    x = n.cba("input", 3, 64, 7, 2)
    x = n.pool(x, "MaxPool", 3, 2, 1)
    cin = 64
    for b, layers in enumerate([6, 12, 24, 16]):
        features = [x]
        for _ in range(layers):
            y = n.op("Concat", features, axis=1) if len(features) > 1 else features[0]
            y = n.act(n.bn(y, cin), "relu")
            y = n.conv(y, cin, 128, 1, bias=False)
            y = n.act(n.bn(y, 128), "relu")
            y = n.conv(y, 128, 32, 3, bias=False)
            features.append(y)
            cin += 32
        x = n.op("Concat", features, axis=1)
        if b < 3:
            x = n.act(n.bn(x, cin), "relu")
            x = n.conv(x, cin, cin // 2, 1, bias=False)
            x = n.pool(x, "AveragePool", 2, 2)
            cin //= 2
    x = n.act(n.bn(x, cin), "relu")
    return n.model(n.linear(n.gap_flat(x), cin, 1000))


def googlenet():
    n = Net("googlenet", 9)
    x = n.cba("input", 3, 64, 7, 2)
    x = n.pool(x, "MaxPool", 3, 2, ceil=1)
    x = n.cba(x, 64, 64, 1)
    x = n.cba(x, 64, 192, 3)
    x = n.pool(x, "MaxPool", 3, 2, ceil=1)
    cin = 192
    blocks = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "pool",
              (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
              (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), "pool",
              (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]
    for b in blocks:
        if b == "pool":
            x = n.pool(x, "MaxPool", 2, 2, ceil=1)
            continue
        c1, r3, c3, r5, c5, cp = b
        p = n.cba(n.pool(x, "MaxPool", 3, 1, 1, ceil=1), cin, cp, 1)
        x = n.op("Concat", [n.cba(x, cin, c1, 1),
                            n.cba(n.cba(x, cin, r3, 1), r3, c3, 3),
                            n.cba(n.cba(x, cin, r5, 1), r5, c5, 3), p], axis=1)
        cin = c1 + c3 + c5 + cp
    return n.model(n.linear(n.gap_flat(x), cin, 1000))


def convnext_tiny():
    n = Net("convnext_tiny", 10)

    def layer_norm(x, c, axis=-1):
        scale = n.const(n.rng.uniform(0.5, 1.5, c).astype(np.float32))
        bias = n.const(n.rng.normal(0, 0.1, c).astype(np.float32))
        return n.op("LayerNormalization", [x, scale, bias], axis=axis, epsilon=1e-6)

    def channels_last(x):
        return n.op("Transpose", [x], perm=[0, 2, 3, 1])

    def channels_first(x):
        return n.op("Transpose", [x], perm=[0, 3, 1, 2])

    def linear_last(x, cin, cout):
        w = n.rng.normal(0, math.sqrt(2.0 / cin), (cin, cout)).astype(np.float32)
        y = n.op("MatMul", [x, n.const(w, "w")])
        return n.op("Add", [y, n.const(n.rng.normal(0, 0.05, cout).astype(np.float32))])

    x = n.conv("input", 3, 96, 4, 4, pad=0)
    x = channels_first(layer_norm(channels_last(x), 96))
    cin = 96
    for stage, (depth, dim) in enumerate(zip([3, 3, 9, 3], [96, 192, 384, 768])):
        if stage > 0:
            x = channels_first(layer_norm(channels_last(x), cin))
            x = n.conv(x, cin, dim, 2, 2, pad=0)
            cin = dim
        for _ in range(depth):
            y = n.conv(x, dim, dim, 7, groups=dim)
            y = layer_norm(channels_last(y), dim)
            y = n.act(linear_last(y, dim, 4 * dim), "gelu")
            y = linear_last(y, 4 * dim, dim)
            y = n.op("Mul", [y, n.const(n.rng.uniform(0.1, 0.3, dim).astype(np.float32))])
            x = n.op("Add", [x, channels_first(y)])
    x = layer_norm(n.gap_flat(x), cin)
    return n.model(n.linear(x, cin, 1000))


MODELS = {
    "resnet18": ("ResNet", lambda: resnet("resnet18", [2, 2, 2, 2], False)),
    "resnet50": ("ResNet", lambda: resnet("resnet50", [3, 4, 6, 3], True)),
    "squeezenet1_1": ("SqueezeNet", squeezenet1_1),
    "mobilenet_v3_small": ("MobileNetV3", lambda: mobilenet_v3("mobilenet_v3_small")),
    "mobilenet_v3_large": ("MobileNetV3", lambda: mobilenet_v3("mobilenet_v3_large")),
    "efficientnet_b0": ("EfficientNet", efficientnet_b0),
    "mnasnet1_0": ("MnasNet", mnasnet1_0),
    "shufflenet_v2_x1_0": ("ShuffleNetV2", shufflenet_v2_x1_0),
    "regnet_y_400mf": ("RegNet", regnet_y_400mf),
    "densenet121": ("DenseNet", densenet121),
    "googlenet": ("GoogLeNet", googlenet),
    "convnext_tiny": ("ConvNeXt", convnext_tiny),
}


def write(out_dir, name):
    family, build = MODELS[name]
    path = os.path.join(out_dir, f"{name}.onnx")
    stamp = os.path.join(out_dir, f"{name}.version")
    if not (os.path.exists(stamp) and open(stamp).read() == str(VERSION) and os.path.exists(path)):
        model = build()
        onnx.save(model, path)
        import onnxruntime as ort
        x = np.random.default_rng(100).normal(0, 1, (1, 3, 224, 224)).astype(np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        y = session.run(None, {"input": x})[0].astype(np.float32)
        assert y.shape == (1, 1000) and np.isfinite(y).all(), (name, y.shape)
        x.astype("<f4").tofile(os.path.join(out_dir, f"{name}.input.f32"))
        y.astype("<f4").tofile(os.path.join(out_dir, f"{name}.ort.f32"))
        with open(stamp, "w") as f:
            f.write(str(VERSION))
    model = onnx.load(path, load_external_data=False)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    return {"name": name, "family": family, "path": path, "params": params, "sha256": sha,
            "operators": sorted({node.op_type for node in model.graph.node})}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/onnx-lambda/zoo"))
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    ap.add_argument("--list", action="store_true", help="print the names and exit")
    args = ap.parse_args()
    if args.list:
        print("\n".join(MODELS))
        return
    os.makedirs(args.out, exist_ok=True)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        sys.exit(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    written = [write(args.out, name) for name in names]
    # The index lists every model in the directory, in MODELS' order, not
    # only those asked for this time.
    index_path = os.path.join(args.out, "index.json")
    known = {m["name"]: m for m in (json.load(open(index_path)) if os.path.exists(index_path) else [])}
    known.update((m["name"], m) for m in written)
    index = [known[name] for name in MODELS if name in known and os.path.exists(known[name]["path"])]
    with open(index_path, "w") as f:
        json.dump(index, f, indent=1)
    json.dump(written, sys.stdout)


if __name__ == "__main__":
    main()
