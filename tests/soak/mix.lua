-- mix.lua — wrk script for tests/soak/soak.py: mixed infer and feedback requests against one
-- model, every response classified, and the step of every acknowledged feedback kept.
--
--   wrk -t2 -c64 -d60s -s tests/soak/mix.lua http://127.0.0.1:PORT -- MODEL IN_DIM OUT_DIM ROWS FEEDBACK_FRACTION OUT_FILE [TOKEN]
--
-- Each thread sends infer with probability 1 - FEEDBACK_FRACTION, else feedback (mse loss
-- against a target), ROWS rows each, from a few fixed random bodies. Responses are counted
-- by "<what> <status>": what is infer / feedback for 200s (told apart by the body), else
-- the error message's first words ("503 the queue is full"). done() writes one JSON object to
-- OUT_FILE: {"counts": {...}, "steps": [...], "retry_after_missing": N, "wrk": {...}}.

local model, in_dim, out_dim, rows, fb_frac, token
local bodies = {}
local threads = {}   -- main state: the threads, for done()
-- Globals of each thread's Lua state, read by done() through thread:get():
counts, steps, no_retry_after, out_file = {}, {}, 0, nil

local function tensor(name, r, c)
  local v = {}
  for i = 1, r * c do v[i] = string.format("%.4f", math.random() * 2 - 1) end
  return string.format('{"name":"%s","datatype":"FP32","shape":[%d,%d],"data":[%s]}',
                       name, r, c, table.concat(v, ","))
end

local function parse_args(args)
  model, in_dim, out_dim = args[1], tonumber(args[2]), tonumber(args[3])
  rows, fb_frac, out_file, token = tonumber(args[4]), tonumber(args[5]), args[6], args[7]
end

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  parse_args(args)
  math.randomseed(tonumber(wrk.thread:get("tid")) * 7919)
  local headers = {["Content-Type"] = "application/json"}
  if token and token ~= "" then headers["Authorization"] = "Bearer " .. token end
  for k = 1, 4 do
    local infer = string.format('{"id":"i%d","inputs":[%s]}', k, tensor("input", rows, in_dim))
    local fb = string.format('{"id":"f%d","inputs":[%s,%s]}', k, tensor("input", rows, in_dim),
                             tensor("target", rows, out_dim))
    bodies[k] = {
      infer = wrk.format("POST", "/v2/models/" .. model .. "/infer", headers, infer),
      feedback = wrk.format("POST", "/v2/models/" .. model .. "/feedback", headers, fb),
    }
  end
end

function request()
  local b = bodies[math.random(#bodies)]
  if math.random() < fb_frac then return b.feedback end
  return b.infer
end

local function bump(key) counts[key] = (counts[key] or 0) + 1 end

function response(status, headers, body)
  if status == 200 then
    local step = body:match('"step":(%d+)')
    if step then
      bump("feedback 200")
      steps[#steps + 1] = tonumber(step)
    else
      bump("infer 200")
    end
    return
  end
  local msg = body:match('"error":"([^"]*)"') or "(no error body)"
  -- the kind of error: status and the first four words of the message (numbers left out)
  local words = {}
  for w in msg:gmatch("%a+") do
    words[#words + 1] = w
    if #words == 4 then break end
  end
  bump(status .. " " .. table.concat(words, " "))
  if status == 503 and not headers["Retry-After"] then no_retry_after = no_retry_after + 1 end
end

local function json_counts(c)
  local parts = {}
  for k, v in pairs(c) do parts[#parts + 1] = string.format("%q:%d", k, v) end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local all, allsteps, missing = {}, {}, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do all[k] = (all[k] or 0) + v end
    for _, s in ipairs(t:get("steps")) do allsteps[#allsteps + 1] = s end
    missing = missing + t:get("no_retry_after")
  end
  local e = summary.errors
  local f = assert(io.open(threads[1]:get("out_file"), "w"))
  f:write(string.format('{"counts":%s,"steps":[%s],"retry_after_missing":%d,' ..
    '"wrk":{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d,' ..
    '"latency_p50_us":%d,"latency_p99_us":%d,"latency_max_us":%d}}\n',
    json_counts(all), table.concat(allsteps, ","), missing, summary.requests, summary.duration,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
  f:close()
end
