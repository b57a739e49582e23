"""Drives `onnx-lambda serve` with the stock Triton/KServe V2 HTTP client.

Usage: triton_client.py HOST:PORT IMAGES_DIR. Prints a JSON report on its last
line; tests/servers/http.rs asserts on it. Uses the client's defaults (binary tensor
data for inputs), so the server must speak the binary extension.
"""
import json
import os
import sys

import numpy as np
import tritonclient.http as httpclient

url, images = sys.argv[1], sys.argv[2]
model = "mobilenetv2-1.0"
client = httpclient.InferenceServerClient(url=url)
report = {
    "server_live": client.is_server_live(),
    "server_ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(model),
    "metadata": client.get_model_metadata(model),
}

# Preprocessed FP32 tensor (the reference input for chelsea.png).
tensor = np.fromfile(os.path.join(images, "..", "testdata", "chelsea.input.1x3x224x224.f32le"), "<f4")
tensor = tensor.reshape(1, 3, 224, 224)
inp = httpclient.InferInput("input", list(tensor.shape), "FP32")
inp.set_data_from_numpy(tensor)  # binary_data=True by default
out = httpclient.InferRequestedOutput("output", binary_data=False)
result = client.infer(model, [inp], outputs=[out])
logits = result.as_numpy("output")
report["fp32_shape"] = list(logits.shape)
report["fp32_top1"] = int(np.argmax(logits[0]))

# Encoded images as BYTES, with the classification extension.
blobs = [open(os.path.join(images, f), "rb").read() for f in ("chelsea.png", "coffee.png")]
inp = httpclient.InferInput("input", [len(blobs)], "BYTES")
inp.set_data_from_numpy(np.array(blobs, dtype=np.object_))
outs = [httpclient.InferRequestedOutput("output", binary_data=False),
        httpclient.InferRequestedOutput("output", binary_data=False, class_count=3)]
result = client.infer(model, [inp], outputs=outs)
response = result.get_response()
fp32 = [o for o in response["outputs"] if o["datatype"] == "FP32"][0]
scores = np.array(fp32["data"], dtype=np.float32).reshape(fp32["shape"])
report["bytes_top1"] = [int(i) for i in np.argmax(scores, axis=1)]
cls = [o for o in response["outputs"] if o["datatype"] == "BYTES"][0]
report["classification"] = cls["data"][:3]
print(json.dumps(report))
