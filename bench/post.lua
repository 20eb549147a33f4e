-- wrk script for `python -m bench ingest`: POST one signed JSON body, count statuses.
--
-- The body and its signature come from the environment (bench/ingest.py writes
-- them): BENCH_BODY_FILE, BENCH_SIGNATURE_HEADER, BENCH_SIGNATURE. Every request
-- carries its own delivery id in X-Event-Id, as every real provider sends one
-- (Stripe's evt_..., GitHub's X-GitHub-Delivery): BENCH_RUN, unique per wrk run,
-- then the thread and a counter, so no two requests of any run share an id.
-- With BENCH_POOL_FILE (lines "signature body", bench/harness.py's write_pool) each
-- request takes the next body of the pool with its own signature instead: hmac-sha256
-- sources deduplicate identical bodies, so repeating one would measure duplicates.
-- `response` only counts status codes, and `done` prints one line
-- "BENCH_JSON {...}" that the driver parses (latencies in microseconds).

local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers[os.getenv("BENCH_SIGNATURE_HEADER")] = os.getenv("BENCH_SIGNATURE")

local pool = {}
local pool_file = os.getenv("BENCH_POOL_FILE")
if pool_file then
  for line in io.lines(pool_file) do
    local space = line:find(" ", 1, true)
    table.insert(pool, {line:sub(1, space - 1), line:sub(space + 1)})
  end
end
local signature_header = os.getenv("BENCH_SIGNATURE_HEADER")

local threads = {}
local run = os.getenv("BENCH_RUN")

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  statuses = {}
  sent = 0
  prefix = string.format("%s-%d-", run, tid)
end

function request()
  sent = sent + 1
  wrk.headers["X-Event-Id"] = prefix .. sent
  if #pool > 0 then
    local entry = pool[(sent - 1) % #pool + 1]
    wrk.headers[signature_header] = entry[1]
    return wrk.format(nil, nil, nil, entry[2])
  end
  return wrk.format()
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d},"statuses":{%s}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, table.concat(parts, ",")))
end
