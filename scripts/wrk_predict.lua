-- wrk script: POST one image to /predict as raw bytes.
-- Usage: IMAGE=tests/data/images/grace_hopper.jpg wrk -s scripts/wrk_predict.lua http://127.0.0.1:8080/predict
local path = os.getenv("IMAGE") or "tests/data/images/grace_hopper.jpg"
local f = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"

local errors = 0
response = function(status, headers, body)
  if status ~= 200 then errors = errors + 1 end
end

done = function(summary, latency, requests)
  io.write(string.format("JSON {\"requests\": %d, \"rps\": %.2f, \"p50_ms\": %.2f, \"p90_ms\": %.2f, \"p99_ms\": %.2f, \"non_2xx\": %d}\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    summary.errors.status))
end
