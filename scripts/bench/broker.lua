-- broker.lua: the broker section of scripts/bench.lua (`--broker`, or
-- `--only broker`, or one figure: `--only broker-spawn|broker-tree|
-- broker-fib|broker-latency|broker-roots`). luapool through a private
-- redis-server on loopback, each figure beside its baselines measured in the
-- same run (redis_baselines.lua: Celery, BullMQ, Redis itself).
--
-- The setup of every figure: two `luapool worker --broker URL --workers 1`
-- processes, started once and serving every run (two threads in all, as
-- many as the local figure `--workers 2` and this machine's CPUs), and a
-- submitter `luapool run ... --broker URL --workers 0` that only submits
-- and reports. Every worker and redis-server started here is stopped here,
-- also when a figure fails.
--
-- Figures (best of N runs unless said; N = --runs):
--   broker-spawn    1M trivial tasks spawned from main (noop.lua): tasks/s,
--                   vs BullMQ addBulk jobs/s. Local first: a subtask runs in
--                   the process that spawned it unless the other worker is
--                   idle, so most of them never cross Redis; how many did
--                   (the run's committed outcomes, HLEN lp:{RUN}:res) is printed.
--   broker-tree     1,101 tasks, 100 children x 10 grandchildren, each
--                   awaiting its children (tree.lua): wall time of the whole
--                   `luapool run` process, median of max(N, 5); vs BullMQ flows and
--                   Celery chords (their time from enqueue to the root's end).
--   broker-fib      fork-join fib(27) (fib.lua): vs `luapool run fib.lua 27
--                   --workers 2` on this machine, max(N, 3) runs of each,
--                   alternating.
--   broker-latency  enqueue-to-start of one task on an idle worker, median
--                   of 50 samples 20 ms apart (the baselines' pause), best of
--                   N runs' medians: broker_host.c, a C host of the API that
--                   submits roots through the broker, against stamp.lua,
--                   whose task returns when it began on CLOCK_MONOTONIC. A
--                   root is the task that a client enqueues: `luapool run`
--                   submits only main, whose subtasks stay local.
--   broker-roots    20,000 roots from the same C host, each crossing Redis
--                   both ways (reported: what a task that does cross costs).
-- --vs (an A/B against another build) does not apply here: give the other
-- build with --bin (its libluapool beside it) in a second run.
local M = {}

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local state = f:read("a"):match("^%d+ %b() (%a)")
  f:close()
  return state ~= nil and state ~= "Z"
end

local function median(xs)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

local function min(xs)
  local m = math.huge
  for _, x in ipairs(xs) do m = math.min(m, x) end
  return m
end

-- Wall seconds of one command (bash's clock, no process around it) and
-- its output; raises when it fails, so that the caller stops what it
-- started.
local function timed(cmd)
  local log = os.tmpname()
  local out = sh(string.format(
    "LC_ALL=C bash -c %s",
    q(string.format("s=$EPOCHREALTIME; %s >%s 2>&1; rc=$?; e=$EPOCHREALTIME; echo $rc $s $e", cmd, log))))
  local rc, s, e = out:match("(%d+) ([%d.]+) ([%d.]+)")
  local text = sh("cat " .. log)
  os.remove(log)
  if tonumber(rc) ~= 0 then error("command failed: " .. cmd .. "\n" .. text, 0) end
  return tonumber(e) - tonumber(s), text
end

-- `luapool worker` processes on the broker, stopped by stop_workers.
local function start_workers(bin, server, n, threads)
  local pids = {}
  for i = 1, n do
    local pid = tonumber(sh(string.format("%s worker --broker %s --workers %d >/tmp/luapool-bench-worker%d.log 2>&1 & echo $!",
      bin, server.url, threads, i)))
    pids[#pids + 1] = pid
  end
  -- Each lists itself in lp:workers as it starts.
  for _ = 1, 200 do
    if tonumber(sh(server.cli .. " HLEN lp:workers")) == n then return pids end
    for _, pid in ipairs(pids) do
      if not alive(pid) then return pids, "a luapool worker exited at its start: " .. sh("cat /tmp/luapool-bench-worker*.log") end
    end
    os.execute("sleep 0.05")
  end
  return pids, "the luapool workers did not join the broker"
end

local function stop_workers(pids)
  for _, pid in ipairs(pids) do os.execute("kill " .. pid .. " 2>/dev/null") end
  for _, pid in ipairs(pids) do
    for _ = 1, 100 do
      if not alive(pid) then break end
      os.execute("sleep 0.05")
    end
    if alive(pid) then os.execute("kill -9 " .. pid .. " 2>/dev/null") end
  end
end

-- How many tasks of the newest run crossed Redis (committed there).
local function crossed(server)
  local run = sh(server.cli .. " ZRANGE lp:runs -1 -1"):gsub("%s+$", "")
  return tonumber((sh(server.cli .. " HLEN " .. q("lp:{" .. run .. "}:res")))) or 0
end

-- broker_host.c built against this luapool's library, or nil and why.
local function build_host(bin, dir)
  local libdir = bin:match("^(.*)/[^/]+$") or "."
  local exe = os.tmpname()
  local out = sh(string.format("cc -O2 -std=c11 -I engine/include %sbroker_host.c -L%s -lluapool -Wl,-rpath,%s -o %s 2>&1 && echo built",
    dir, q(libdir), q(sh("cd " .. q(libdir) .. " && pwd"):gsub("%s+$", "")), exe))
  if not out:match("built") then
    os.remove(exe)
    return nil, "broker_host.c did not build: " .. out
  end
  return exe
end

local function json_field(text, name)
  local v = tonumber(text:match('"' .. name .. '":([%d.eE+-]+)'))
  if not v then error("broker_host.c printed no " .. name .. ": " .. text, 0) end
  return v
end

function M.run(ctx)
  local runs, bin, dir, report, want = ctx.runs, ctx.bin, ctx.dir, ctx.report, ctx.want
  local baselines = dofile(dir .. "redis_baselines.lua")
  print(string.format("(broker: baselines first, best of %d run(s) each; Celery, BullMQ and Redis on a private redis-server)", runs))
  io.stdout:flush()
  local b = baselines.measure { runs = runs }
  for _, note in ipairs(b.notes) do print("  " .. note) end
  local bull, cel, red = b.bullmq, b.celery, b.redis

  local server = baselines.start_redis()
  local pids, host = {}, nil
  local ok, err = pcall(function()
    local why
    pids, why = start_workers(bin, server, 2, 1)
    if why then error(why, 0) end
    local function run(script, args, extra)
      return string.format("%s run %s%s %s --workers 0 --broker %s%s", bin, dir, script, args, server.url,
        extra and " " .. extra or "")
    end
    print(string.format("(broker: 2 x `%s worker --broker %s --workers 1`, submitter at --workers 0)", bin, server.url))

    if want("broker-spawn") then
      local n, ts, through = 1000000, {}, {}
      local cmd = run("noop.lua", n, "--order completion")
      for i = 1, runs do
        ts[i] = timed(cmd)
        through[i] = crossed(server) - 1 -- main crossed too
      end
      local rate = n / min(ts)
      report("broker: 1M spawns from main", string.format("%.2f s, %.2f M tasks/s (median %.2f s)", min(ts),
        rate / 1e6, median(ts)), ">= 250 k/s", rate >= 250e3)
      report("  subtasks that crossed Redis", string.format("%d of %d (median of runs)", median(through), n),
        "(reported)", true)
      if bull then
        report("  vs BullMQ addBulk", string.format("%.0fx (BullMQ: %.0f jobs/s)", rate / bull.add_jobs_per_s,
          bull.add_jobs_per_s), ">= 25x", rate / bull.add_jobs_per_s >= 25)
      end
      if cel then
        report("  vs Celery .delay / chunks", string.format("%.0fx / %.0fx (%.0f / %.0f jobs/s)",
          rate / cel.delay_jobs_per_s, rate / cel.chunks_jobs_per_s, cel.delay_jobs_per_s,
          cel.chunks_jobs_per_s), "(reported)", true)
      end
      print("    command: " .. cmd)
    end

    if want("broker-tree") then
      local ts = {}
      local cmd = run("tree.lua", "100 10")
      for i = 1, math.max(runs, 5) do
        local t, out = timed(cmd)
        if not out:match("^1101\n") then error("tree.lua printed " .. out, 0) end
        ts[i] = t
      end
      local t = median(ts)
      report("broker: 1,101-task tree", string.format("%.1f ms median of %d (best %.1f ms)", t * 1e3, #ts,
        min(ts) * 1e3), "<= 50 ms", t <= 0.050)
      local beside = {}
      if bull then beside[#beside + 1] = string.format("BullMQ %.0f ms (%.0fx)", bull.tree_s * 1e3, bull.tree_s / t) end
      if cel then beside[#beside + 1] = string.format("Celery %.0f ms (%.0fx)", cel.tree_s * 1e3, cel.tree_s / t) end
      if #beside > 0 then report("  vs", table.concat(beside, ", "), "(reported)", true) end
      print("    command: " .. cmd)
    end

    if want("broker-fib") then
      local tb, tl = {}, {}
      local cmd = run("fib.lua", 27, "--order completion")
      local lcmd = string.format("%s run %sfib.lua 27 --workers 2 --order completion", bin, dir)
      for i = 1, math.max(runs, 3) do
        local out
        tb[i], out = timed(cmd)
        if not out:match("^196418\n") then error("fib.lua 27 through the broker printed " .. out, 0) end
        tl[i] = timed(lcmd)
      end
      local ratio = min(tb) / min(tl)
      report("broker: fib(27) fork-join", string.format("%.3f s, %.2fx local --workers 2 (%.3f s)", min(tb), ratio,
        min(tl)), "<= 1.5x local", ratio <= 1.5)
      report("  medians", string.format("%.3f s vs %.3f s: %.2fx", median(tb), median(tl), median(tb) / median(tl)),
        "(reported)", true)
      print("    command: " .. cmd)
      print("    local:   " .. lcmd)
    end

    if want("broker-latency") or want("broker-roots") then
      local why
      host, why = build_host(bin, dir)
      if not host then print("  " .. why) end
      if host then print(string.format("(broker: %sbroker_host.c built with cc -O2 against %s's libluapool)", dir, bin)) end
    end

    if host and want("broker-latency") then
      local meds, mins, samples, pause = {}, {}, 50, 20
      if bull and bull.latency_pause_ms then pause = bull.latency_pause_ms end
      local cmd = string.format("%s %s %sstamp.lua latency %d %g", host, server.url, dir, samples, pause)
      for i = 1, runs do
        local _, out = timed(cmd)
        meds[i], mins[i] = json_field(out, "latency_ms"), json_field(out, "latency_min_ms")
      end
      local ms = min(meds)
      report("broker: enqueue-to-start, idle", string.format("%.2f ms median of %d, %g ms apart (min %.2f)", ms,
        samples, pause, min(mins)), "<= 0.5 ms", ms <= 0.5)
      local beside = {}
      if bull then beside[#beside + 1] = string.format("BullMQ %.2f ms", bull.latency_ms) end
      if cel then beside[#beside + 1] = string.format("Celery %.2f ms", cel.latency_ms) end
      if #beside > 0 then report("  vs", table.concat(beside, ", "), "(reported)", true) end
      print("    command: broker_host.c " .. cmd:sub(#host + 2))
    end

    if host and want("broker-roots") then
      local n, rates = 20000, {}
      local cmd = string.format("%s %s %sstamp.lua roots %d", host, server.url, dir, n)
      for i = 1, runs do
        local _, out = timed(cmd)
        rates[i] = json_field(out, "roots_per_s")
      end
      local rate = math.max(table.unpack(rates))
      local vs = bull and string.format(", %.1fx BullMQ addBulk", rate / bull.add_jobs_per_s) or ""
      report("broker: 20k roots from a C host", string.format("%.0f tasks/s, each through Redis%s", rate, vs),
        "(reported)", true)
      print("    command: broker_host.c " .. cmd:sub(#host + 2))
    end
  end)
  stop_workers(pids)
  server.stop()
  if host then os.remove(host) end
  if red then
    report("  Redis here: FCALL / EVALSHA", string.format("%.0f / %.0f calls/s, pipelined SET %.2f M/s",
      red.fcall_per_s, red.evalsha_per_s, red.pipelined_set_per_s / 1e6), "(reported)", true)
  end
  if not ok then error(err, 0) end
end

return M
