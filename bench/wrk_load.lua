-- wrk script of bench/http_load.py (--generator wrk):
--
--     wrk -t T -c C -d D --timeout 10s --latency -s bench/wrk_load.lua URL -- REQUESTS RUN
--
-- REQUESTS: a file of raw HTTP/1.1 requests separated by NUL bytes (the URL only gives the
-- address). A single request without "@KEY@" becomes wrk's static request (no Lua call per
-- request; wrk.format() rebuilds it: same method, path, headers and body, header names in
-- lower case). Otherwise request() hands out the raw requests round robin, each thread from
-- its own offset, and an "@KEY@" becomes RUN-<thread>-<n>: a key unique to this wrk process
-- (RUN is unique per process) and request (the Idempotency-Key).
--
-- done() prints one JSON line on stdout: {"requests", "duration_us", "errors": {"connect",
-- "read", "write", "status", "timeout"}, "quantiles_us": [1,000 values]}, quantiles_us[k + 1]
-- being wrk's latency percentile k / 10 (k = 0 .. 999; k = 0: the min; all 0 without a
-- response). wrk's latency histogram includes its coordinated-omission correction: each
-- response slower than twice the mean interval per connection adds synthetic samples.

local KEY = "@KEY@"
local QUANTILES = 1000

local threads = 0

function setup(thread)
   thread:set("id", threads)
   threads = threads + 1
end

local function read_requests(path)
   local file = assert(io.open(path, "rb"))
   local text = file:read("*a")
   file:close()
   local list, start = {}, 1
   while true do
      local stop = text:find("\0", start, true)
      list[#list + 1] = text:sub(start, (stop or #text + 1) - 1)
      if not stop then
         return list
      end
      start = stop + 1
   end
end

-- The parts of a raw request for wrk.format() (wrk's static request).
local function set_static(raw)
   local head, body = raw:match("^(.-)\r\n\r\n(.*)$")
   local method, path = head:match("^(%S+) (%S+) HTTP/1.1")
   wrk.method, wrk.path, wrk.body = method, path, body ~= "" and body or nil
   for name, value in head:gmatch("\r\n([^:\r\n]+): ([^\r\n]*)") do
      if name:lower() ~= "content-length" then -- wrk.format() sets it from the body
         wrk.headers[name] = value
      end
   end
end

function init(args)
   local raw = read_requests(args[1])
   local run = args[2]
   if #raw == 1 and not raw[1]:find(KEY, 1, true) then
      set_static(raw[1])
      return
   end
   -- Pre-built: a request is either a string or {before, after} around its "@KEY@".
   local built = {}
   for i, text in ipairs(raw) do
      local at = text:find(KEY, 1, true)
      built[i] = at and { text:sub(1, at - 1), text:sub(at + #KEY) } or text
   end
   local count, index, sent = #built, (id * 7919) % #built, 0
   local prefix = string.format("%s-%d-", run, id)
   request = function()
      index = index % count + 1
      local r = built[index]
      if type(r) == "string" then
         return r
      end
      sent = sent + 1
      return r[1] .. prefix .. sent .. r[2]
   end
end

function done(summary, latency, requests)
   local quantiles = {}
   for k = 0, QUANTILES - 1 do
      quantiles[k + 1] = string.format("%d", latency:percentile(100 * k / QUANTILES))
   end
   local e = summary.errors
   io.write(string.format(
      '{"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, '
         .. '"write": %d, "status": %d, "timeout": %d}, '
         .. '"quantiles_us": [%s]}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      table.concat(quantiles, ", ")))
end
