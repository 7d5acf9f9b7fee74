-- wrk script: POST webhooks with Basic auth and a JSON body, count what the
-- server acknowledged.  Configured through the environment (bench.py sets it):
--   BENCH_AUTH      value of the Authorization header ("Basic ...")
--   BENCH_BATCH     incidents per request: 1 sends an object, N > 1 an array
--   BENCH_CLOSE     "1" sends Connection: close, so every request is a new
--                   TCP + TLS connection
-- At the end one line "BENCH-RESULT {json}" carries the counts and latencies.

local batch = tonumber(os.getenv("BENCH_BATCH") or "1")

local function incident(i)
  return string.format(
    '{"name":"bench incident %d","type":"Bench","occurred":"2024-05-01T10:00:00Z",'
      .. '"rawJson":{"source":"wrk","domain":"example.com","threat":"Medium",'
      .. '"summary":"[Bench] New vulnerability identified",'
      .. '"link":"https://example.com/object/%d","hits":%d}}',
    i, 555 + i, i)
end

local body
if batch == 1 then
  body = incident(1)
else
  local parts = {}
  for i = 1, batch do parts[i] = incident(i) end
  body = "[" .. table.concat(parts, ",") .. "]"
end

wrk.method = "POST"
wrk.body = body
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")
wrk.headers["Content-Type"] = "application/json"
if os.getenv("BENCH_CLOSE") == "1" then
  wrk.headers["Connection"] = "close"
end

-- Per-thread counters (each thread has its own Lua state).
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok = 0        -- 200 answers
  acked = 0     -- incidents those answers acknowledged (ids counted)
  other = 0     -- any other status
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
    local _, ids = string.gsub(body, '"id":', "")
    acked = acked + ids
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local t_ok, t_acked, t_other = 0, 0, 0
  for _, thread in ipairs(threads) do
    t_ok = t_ok + thread:get("ok")
    t_acked = t_acked + thread:get("acked")
    t_other = t_other + thread:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH-RESULT {"duration_us":%d,"requests":%d,"ok":%d,"acked":%d,"other":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,"body_bytes":%d}\n',
    summary.duration, summary.requests, t_ok, t_acked, t_other,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, #body))
end
