-- wrk script for bench/run.sh.
--   wrk ... -s bench/wrk.lua                 static request (headers from -H)
--   wrk ... -s bench/wrk.lua -- KEYFILE      X-API-Key taken round-robin per request
--                                            from KEYFILE (one key per line)
--   wrk ... -s bench/wrk.lua -- FILE bearer  Authorization: Bearer <line>, round-robin
-- Always prints one machine-readable line at the end:
--   BENCH requests=N duration_us=N p50_us=N p99_us=N connect=N read=N write=N status=N timeout=N

local reqs = {}
local n, i = 0, 0

function init(args)
   local file = args[1]
   if file == nil or file == "" then
      return -- no `request` function: wrk keeps its pre-built static request
   end
   local bearer = args[2] == "bearer"
   for key in io.lines(file) do
      if key ~= "" then
         local headers = {}
         for k, v in pairs(wrk.headers) do headers[k] = v end
         if bearer then
            headers["Authorization"] = "Bearer " .. key
         else
            headers["X-API-Key"] = key
         end
         n = n + 1
         reqs[n] = wrk.format(nil, nil, headers)
      end
   end
   -- Defined only in this mode; wrk checks for it after init().
   request = function()
      i = i % n + 1
      return reqs[i]
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99),
      e.connect, e.read, e.write, e.status, e.timeout))
end
