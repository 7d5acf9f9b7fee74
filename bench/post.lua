-- wrk script: POST webhooks with Basic auth and a JSON body, count what the
-- server acknowledged.  Configured through the environment (bench.py sets it):
--   BENCH_AUTH      value of the Authorization header ("Basic ...")
--   BENCH_BATCH     incidents per request: 1 sends an object, N > 1 an array
--   BENCH_BODY_FILE a file whose bytes are the body of every request instead
--                   (bench/payloads/*.json); BENCH_BATCH is then not used
--   BENCH_CLOSE     "1" sends Connection: close, so every request is a new
--                   TCP + TLS connection
--   BENCH_VARY      "1": every request distinct and signed (one incident):
--                   its own rawJson.alertId and webhook-id (BENCH_SALT, the
--                   thread and a counter), webhook-timestamp now, and
--                   webhook-signature v1,<base64 HMAC-SHA256 of
--                   "<id>.<timestamp>.<body>"> (Standard Webhooks), computed
--                   per request by OpenSSL's HMAC (the libcrypto wrk is
--                   linked with, through LuaJIT's ffi).  Answer entries
--                   marked "duplicate": true are counted.
--   BENCH_SIGNING_KEY  the HMAC key, in hex (BENCH_VARY only)
--   BENCH_SALT      new for every wrk run, so no id repeats across runs
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
local body_file = os.getenv("BENCH_BODY_FILE") or ""
if body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  body = f:read("*a")
  f:close()
elseif batch == 1 then
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

local vary = os.getenv("BENCH_VARY") == "1"

if vary then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct evp_md_st EVP_MD;
    const EVP_MD *EVP_sha256(void);
    unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                        const unsigned char *d, size_t n, unsigned char *md,
                        unsigned int *md_len);
    int EVP_EncodeBlock(unsigned char *t, const unsigned char *f, int n);
  ]]
  -- wrk is linked with libcrypto: its symbols are in the global namespace.
  local crypto = ffi.C
  if not pcall(function() return crypto.HMAC end) then
    crypto = ffi.load("libcrypto.so.3")
  end
  local key = (os.getenv("BENCH_SIGNING_KEY") or ""):gsub("..", function(h)
    return string.char(tonumber(h, 16))
  end)
  local sha256 = crypto.EVP_sha256()
  local mac = ffi.new("unsigned char[32]")
  local mac_len = ffi.new("unsigned int[1]")
  local encoded = ffi.new("unsigned char[48]")
  local salt = os.getenv("BENCH_SALT") or "0"

  local function sign(message)
    crypto.HMAC(sha256, key, #key, message, #message, mac, mac_len)
    local n = crypto.EVP_EncodeBlock(encoded, mac, 32)
    return "v1," .. ffi.string(encoded, n)
  end

  local template = '{"name":"bench incident %d","type":"Bench",'
    .. '"occurred":"2024-05-01T10:00:00Z",'
    .. '"rawJson":{"source":"wrk","domain":"example.com","threat":"Medium",'
    .. '"summary":"[Bench] New vulnerability identified",'
    .. '"link":"https://example.com/object/556","hits":1,"alertId":"%s"}}'
  local count = 0

  -- wrk calls it for every request, when the script defines it.
  function request()
    count = count + 1
    local tag = string.format("%s-%d-%d", salt, thread_id or 0, count)
    local text = string.format(template, count, tag)
    local message_id = "msg_" .. tag
    local timestamp = tostring(os.time())
    local headers = wrk.headers
    headers["webhook-id"] = message_id
    headers["webhook-timestamp"] = timestamp
    headers["webhook-signature"] = sign(message_id .. "." .. timestamp .. "." .. text)
    return wrk.format(nil, nil, headers, text)
  end
end

-- Per-thread counters (each thread has its own Lua state).
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

function init(args)
  ok = 0          -- 200 answers
  acked = 0       -- incidents those answers acknowledged (ids counted)
  other = 0       -- any other status
  duplicates = 0  -- answer entries marked "duplicate": true (BENCH_VARY only)
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
    local _, ids = string.gsub(body, '"id":', "")
    acked = acked + ids
    if vary then
      local _, dups = string.gsub(body, '"duplicate": ?true', "")
      duplicates = duplicates + dups
    end
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local t_ok, t_acked, t_other, t_dups = 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    t_ok = t_ok + thread:get("ok")
    t_acked = t_acked + thread:get("acked")
    t_other = t_other + thread:get("other")
    t_dups = t_dups + thread:get("duplicates")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH-RESULT {"duration_us":%d,"requests":%d,"ok":%d,"acked":%d,"other":%d,'
      .. '"duplicates":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,"body_bytes":%d}\n',
    summary.duration, summary.requests, t_ok, t_acked, t_other, t_dups,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, #body))
end
