-- redis_baselines.lua: the job queues on Redis that luapool's broker is
-- compared against (Celery, BullMQ), and Redis itself on loopback, measured
-- on a private redis-server started here (a free loopback port, never
-- 6379, no persistence) and stopped here. Run from the repository top.
--
-- Alone:  lua5.4 scripts/bench/redis_baselines.lua [--runs N] [--n N] [--only celery|bullmq|redis]
-- From scripts/bench.lua:
--   local baselines = dofile("scripts/bench/redis_baselines.lua")
--   local b = baselines.measure{ runs = runs }  -- b.celery, b.bullmq, b.redis: nil if not installed
--   (measure{ server = server } runs them on that server instead, and
--   empties it with FLUSHALL before each tool)
--   local server = baselines.start_redis()      -- a private Redis for luapool's own figures
--   ... server.url ...; server.stop()
--
-- The figures: b.celery.delay_jobs_per_s, .chunks_jobs_per_s (chunks of
-- 100), .tree_s (1,101 jobs), .latency_ms (median enqueue-to-start);
-- b.bullmq.add_jobs_per_s, .tree_s, .latency_ms; b.redis.evalsha_per_s,
-- .fcall_per_s, .pipelined_set_per_s, .pipelined_get_per_s; each tool's
-- .command (b.redis.commands) says how it was run.
-- A tool that is not installed is skipped with a note (b.notes); what they
-- need comes with scripts/deps.sh --broker-baselines. Every figure is the
-- best of the runs: jobs/s the highest, seconds and milliseconds the lowest.
local json = require "dkjson"

local M = {}
M.dir = "scripts/bench/redis_baselines/"
-- Defaults sized for the whole baseline run to take about 30 s here.
M.defaults = { runs = 1, celery_n = 4000, celery_chunk_n = 16000, bullmq_n = 20000, redis_n = 200000 }

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

local function ok(cmd) return os.execute(cmd .. " >/dev/null 2>&1") == true end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sleep(s) os.execute("sleep " .. s) end

-- Running, not gone nor a zombie: a server started in the background is
-- reaped by whoever adopted it, maybe long after it exits.
local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local state = f:read("a"):match("^%d+ %b() (%a)")
  f:close()
  return state ~= nil and state ~= "Z"
end

-- A port nobody listens on now, as the kernel hands one out. A server that
-- loses the race for it is seen by start_redis, which tries another.
local function free_port()
  for _, py in ipairs { "python3", "/usr/bin/python3" } do
    local port = tonumber(sh(py .. [[ -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null]]))
    if port then return port end
  end
  return math.random(20000, 40000)
end

-- A private redis-server on 127.0.0.1: {port, url, pid, cli, stop}.
function M.start_redis()
  local dir = sh("mktemp -d /tmp/luapool-bench-redis.XXXXXX"):gsub("%s+$", "")
  for _ = 1, 5 do
    local port = free_port()
    if port ~= 6379 then
      local pid = tonumber(sh(string.format(
        "redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no --dir %s --loglevel warning >%s/log 2>&1 & echo $!",
        port, q(dir), q(dir))))
      local cli = string.format("redis-cli -h 127.0.0.1 -p %d", port)
      for _ = 1, 100 do
        -- Ours if it answers with our process id; another server that
        -- holds the port answers with its own.
        local id = sh(cli .. " INFO server 2>/dev/null"):match("process_id:(%d+)")
        if id then
          if tonumber(id) == pid then
            local server = { port = port, url = string.format("redis://127.0.0.1:%d/0", port), pid = pid, cli = cli }
            function server.stop()
              ok("kill " .. pid)
              for _ = 1, 100 do
                if not alive(pid) then break end
                sleep(0.05)
              end
              ok("rm -rf " .. q(dir))
            end
            return server
          end
          break
        end
        if not alive(pid) then break end
        sleep(0.05)
      end
      ok("kill " .. pid)
    end
  end
  error("redis_baselines: could not start redis-server on a free loopback port: " .. sh("cat " .. q(dir) .. "/log"))
end

-- The last JSON line a baseline printed, or nil and the end of its output.
local function run_json(cmd)
  local log = os.tmpname()
  local out = sh(cmd .. " 2>" .. log)
  local line = out:match("(%b{})%s*$")
  local figures = line and json.decode(line)
  if not figures then
    local err = sh("tail -n 5 " .. log)
    os.remove(log)
    return nil, "failed: " .. cmd .. "\n" .. err
  end
  os.remove(log)
  figures.command = cmd
  return figures
end

-- Keeps the best of two runs' figures, key by key.
local function keep_best(best, new)
  if not best then return new end
  for k, v in pairs(new) do
    if type(v) == "number" then
      if k:match("_per_s$") then best[k] = math.max(best[k], v)
      elseif k:match("_ms$") or k:match("_s$") then best[k] = math.min(best[k], v) end
    end
  end
  return best
end

-- Debian's python3-celery lands in the system's python3, which need not be
-- the first python3 on the PATH.
local function celery_python()
  for _, py in ipairs { "/usr/bin/python3", "python3" } do
    if ok(py .. " -c 'import celery, redis'") then return py end
  end
end

-- Celery: {delay_jobs_per_s, chunks_jobs_per_s, tree_s, latency_ms, ...}.
function M.celery(server, opts)
  local py = celery_python()
  if not py then return nil, "Celery skipped: python3-celery and python3-redis not installed (scripts/deps.sh --broker-baselines)" end
  ok(server.cli .. " FLUSHALL")
  return run_json(string.format("%s %scelery_bench.py %s all %d %d", py, M.dir, server.url, opts.celery_n,
    opts.celery_chunk_n))
end

-- BullMQ: {add_jobs_per_s, tree_s, latency_ms, ...}.
function M.bullmq(server, opts)
  if not ok("command -v node") then return nil, "BullMQ skipped: node not installed (scripts/deps.sh --broker-baselines)" end
  if not ok("test -d " .. M.dir .. "node_modules/bullmq") then
    return nil, "BullMQ skipped: not installed (npm install in " .. M.dir .. ", or scripts/deps.sh --broker-baselines)"
  end
  ok(server.cli .. " FLUSHALL")
  return run_json(string.format("node %sbullmq_bench.js %s all %d", M.dir, server.url, opts.bullmq_n))
end

-- redis-benchmark --csv: the requests/s of each test it printed. Its
-- options go before a command to run, which takes the rest of the line.
local function benchmark(server, args)
  local cmd = string.format("redis-benchmark -h 127.0.0.1 -p %d --csv %s", server.port, args)
  local rates = {}
  for rps in sh(cmd .. " 2>/dev/null"):gmatch('\n"[^"]*","([%d.]+)"') do rates[#rates + 1] = tonumber(rps) end
  return rates, cmd
end

-- Redis alone: atomic script calls/s (EVALSHA of a one-line script, and
-- FCALL of the same as a Redis function, 50 clients) and pipelined
-- commands/s (SET and GET, 100 to a pipeline, 50 clients).
function M.redis(server, opts)
  if not ok("command -v redis-benchmark") then return nil, "Redis figures skipped: no redis-benchmark" end
  ok(server.cli .. " FLUSHALL")
  local sha = sh(server.cli .. [[ SCRIPT LOAD "return redis.call('INCR', KEYS[1])"]]):gsub("%s+$", "")
  local lib = os.tmpname()
  local f = assert(io.open(lib, "w"))
  f:write("#!lua name=bench\nredis.register_function('bench_incr', function(keys) return redis.call('INCR', keys[1]) end)\n")
  f:close()
  ok(server.cli .. " -x FUNCTION LOAD REPLACE <" .. lib)
  os.remove(lib)
  local n = opts.redis_n
  local evalsha, evalsha_cmd = benchmark(server, string.format("-n %d -c 50 EVALSHA %s 1 bench:counter", n, sha))
  local fcall, fcall_cmd = benchmark(server, string.format("-n %d -c 50 FCALL bench_incr 1 bench:counter", n))
  local piped, piped_cmd = benchmark(server, string.format("-n %d -c 50 -P 100 -t set,get", 10 * n))
  if not (evalsha[1] and fcall[1] and piped[2]) then return nil, "Redis figures: redis-benchmark printed no rate" end
  return {
    evalsha_per_s = evalsha[1], fcall_per_s = fcall[1], pipelined_set_per_s = piped[1],
    pipelined_get_per_s = piped[2], commands = { evalsha_cmd, fcall_cmd, piped_cmd },
  }
end

-- Every baseline that is installed, on one private Redis (or opts.server),
-- each the best of opts.runs: {celery, bullmq, redis, notes}.
function M.measure(opts)
  opts = setmetatable(opts or {}, { __index = M.defaults })
  local own = not opts.server
  local server = opts.server or M.start_redis()
  local result = { notes = {}, server = server.url }
  local done, err = pcall(function()
    for _, tool in ipairs { "celery", "bullmq", "redis" } do
      if not opts.only or opts.only == tool then
        for _ = 1, opts.runs do
          local figures, note = M[tool](server, opts)
          if not figures then
            result.notes[#result.notes + 1] = note
            break
          end
          result[tool] = keep_best(result[tool], figures)
        end
      end
    end
  end)
  if own then server.stop() end
  if not done then error(err, 0) end
  return result
end

local function main()
  local opts = {}
  local i = 1
  while i <= #arg do
    local flag, value = arg[i], arg[i + 1]
    if flag == "--runs" then opts.runs = tonumber(value)
    elseif flag == "--n" then
      local n = tonumber(value)
      opts.celery_n, opts.celery_chunk_n, opts.bullmq_n = n, 4 * n, n
    elseif flag == "--only" then opts.only = value
    else
      io.stderr:write("usage: lua5.4 scripts/bench/redis_baselines.lua [--runs N] [--n N] [--only celery|bullmq|redis]\n")
      os.exit(2)
    end
    i = i + 2
  end
  local started = os.time()
  local b = M.measure(opts)
  local function row(name, figure) print(string.format("%-40s %s", name, figure)) end
  print(string.format("Redis baselines, best of %d run(s), on %s", (opts.runs or M.defaults.runs), b.server))
  local c = b.celery
  if c then
    row(string.format("Celery %s .delay(), %d jobs", c.version, c.delay_n), string.format("%.0f jobs/s", c.delay_jobs_per_s))
    row(string.format("  chunks of 100, %d jobs", c.chunks_n), string.format("%.0f jobs/s", c.chunks_jobs_per_s))
    row("  tree of 1,101 jobs (chords)", string.format("%.2f s", c.tree_s))
    row("  enqueue-to-start, idle worker", string.format("%.2f ms median of %d, %g ms apart", c.latency_ms, c.latency_samples, c.latency_pause_ms))
    row("  command", c.command)
  end
  local m = b.bullmq
  if m then
    row(string.format("BullMQ %s addBulk, %d jobs", m.version, m.add_n), string.format("%.0f jobs/s", m.add_jobs_per_s))
    row("  tree of 1,101 jobs (FlowProducer)", string.format("%.2f s", m.tree_s))
    row("  enqueue-to-start, idle worker", string.format("%.2f ms median of %d, %g ms apart", m.latency_ms, m.latency_samples, m.latency_pause_ms))
    row("  command", m.command)
  end
  local r = b.redis
  if r then
    row("Redis EVALSHA of a one-line script", string.format("%.0f calls/s", r.evalsha_per_s))
    row("  FCALL of the same function", string.format("%.0f calls/s", r.fcall_per_s))
    row("  pipelined SET / GET, -P 100", string.format("%.2f / %.2f M commands/s", r.pipelined_set_per_s / 1e6,
      r.pipelined_get_per_s / 1e6))
    for _, cmd in ipairs(r.commands) do row("  command", cmd) end
  end
  for _, note in ipairs(b.notes) do print(note) end
  print(string.format("(%d s)", os.time() - started))
end

if arg and arg[0] and arg[0]:match("redis_baselines%.lua$") then main() end
return M
