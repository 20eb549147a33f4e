-- wrk script for `python -m bench ingest`: POST one signed JSON body, count statuses.
--
-- The body and its signature come from the environment (bench/ingest.py writes
-- them): BENCH_BODY_FILE, BENCH_SIGNATURE_HEADER, BENCH_SIGNATURE. Every request
-- carries its own delivery id in X-Event-Id, as every real provider sends one
-- (Stripe's evt_..., GitHub's X-GitHub-Delivery): BENCH_RUN, unique per wrk run,
-- then the thread and a counter, so no two requests of any run share an id.
-- `response` only counts status codes, and `done` prints one line
-- "BENCH_JSON {...}" that the driver parses (latencies in microseconds).

local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers[os.getenv("BENCH_SIGNATURE_HEADER")] = os.getenv("BENCH_SIGNATURE")

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
