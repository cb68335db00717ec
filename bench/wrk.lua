-- wrk script for bench/ingest.py: replays pre-built raw HTTP requests.
-- args: <requests file> <wrap|once> <threads>
-- The file holds "<length>\n<raw request>" records. Thread k of n takes records k, k+n, ...
-- "wrap" cycles through them (the bare endpoint); "once" stops the thread when its share is
-- used up, so every request the relay sees is a new event.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local reqs = {}
local idx = 0
local mode = "wrap"
exhausted = 0

function init(args)
  local path, nthreads = args[1], tonumber(args[3] or "1")
  mode = args[2] or "wrap"
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  local pos, i = 1, 0
  while pos <= #data do
    local nl = string.find(data, "\n", pos, true)
    local len = tonumber(string.sub(data, pos, nl - 1))
    if i % nthreads == id then
      reqs[#reqs + 1] = string.sub(data, nl + 1, nl + len)
    end
    i = i + 1
    pos = nl + 1 + len
  end
end

function request()
  idx = idx + 1
  if idx > #reqs then
    if mode == "once" then
      exhausted = 1
      wrk.thread:stop()
      return reqs[#reqs]
    end
    idx = 1
  end
  return reqs[idx]
end


function done(summary, latency, requests)
  local ex = 0
  for _, t in ipairs(threads) do
    ex = ex + t:get("exhausted")
  end
  -- no response() callback (it would make wrk parse every body): non-2xx come from the summary
  local badn = summary.errors.status
  local okn = summary.requests - badn
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "ok": %d, "bad": %d, "exhausted": %d, ' ..
    '"errors": %d, "p50_ms": %.2f, "p99_ms": %.2f}\n',
    summary.requests, summary.duration, okn, badn, ex,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
