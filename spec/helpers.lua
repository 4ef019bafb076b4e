-- Shared setup for the behaviour specs: find the luapool binary, run it on a
-- script (inline text or a file) and hand back what it wrote and how it exited.
-- Only the Lua standard library is used; the binary runs through /bin/sh with
-- every word shell-quoted, stdout and stderr captured into separate temp files.

local helpers = {}

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local p = io.popen("pwd")
  local cwd = p:read("l")
  p:close()
  return cwd .. "/" .. path
end

-- The repository top: this file lives in <root>/spec/.
local here = debug.getinfo(1, "S").source:gsub("^@", "")
local specdir = absolute(dirname(here)):gsub("/%./", "/"):gsub("/%.$", "")
helpers.root = specdir:gsub("/spec/?$", "")

helpers.bin = os.getenv("LUAPOOL_BIN") or (helpers.root .. "/build/luapool")

-- Seconds a single run may take before it is killed (a hang must fail a spec,
-- never the whole suite). Killed runs report code 124 and timed_out = true.
helpers.default_timeout = tonumber(os.getenv("LUAPOOL_SPEC_TIMEOUT")) or 60

function helpers.quote(s)
  s = tostring(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

function helpers.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

function helpers.write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

function helpers.split_lines(s)
  local lines = {}
  for line in (s or ""):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  -- A last line without its newline. (A pattern anchored with `$` would
  -- rescan every suffix: quadratic on the megabyte lines some specs make.)
  s = s or ""
  local last = 0
  for pos in s:gmatch("()\n") do last = pos end
  if last < #s then lines[#lines + 1] = s:sub(last + 1) end
  return lines
end

function helpers.sorted(list)
  local copy = {}
  for i, v in ipairs(list) do copy[i] = v end
  table.sort(copy)
  return copy
end

-- A fresh temp path ending in `suffix`; the caller removes it.
function helpers.tmpname(suffix)
  local base = os.tmpname()
  os.remove(base)
  return base .. (suffix or "")
end

-- Writes inline script text to a temp .lua file and returns its path.
function helpers.write_script(text)
  local path = helpers.tmpname(".lua")
  helpers.write_file(path, text)
  return path
end

local function binary_present()
  local f = io.open(helpers.bin, "rb")
  if f then f:close() return true end
  return false
end

-- Runs the binary with the given argument words. opts.timeout bounds the run.
-- Returns { out, err, code, lines, elapsed, timed_out }.
-- Whether the binary under test is built with a sanitizer: then its peak
-- memory (ASan's quarantine alone is 256 MB) says nothing of luapool's.
function helpers.sanitized()
  local nm = io.popen("grep -c -a -E '__(a|t)san_init' " .. helpers.quote(helpers.bin))
  local n = tonumber(nm:read("a"):match("%d+") or "0")
  nm:close()
  return n > 0
end

function helpers.exec(argv, opts)
  opts = opts or {}
  if not binary_present() then
    error("luapool binary not found at " .. helpers.bin ..
          " (build it with cmake, or set LUAPOOL_BIN)", 2)
  end
  local words = { helpers.quote(helpers.bin) }
  if opts.env then -- extra environment for this run: { NAME = value }
    local names = {}
    for k in pairs(opts.env) do names[#names + 1] = k end
    table.sort(names)
    for i = #names, 1, -1 do
      table.insert(words, 1, helpers.quote(names[i] .. "=" .. opts.env[names[i]]))
    end
    table.insert(words, 1, "env")
  end
  for _, a in ipairs(argv) do words[#words + 1] = helpers.quote(a) end
  local outf, errf = helpers.tmpname(".out"), helpers.tmpname(".err")
  local limit = opts.timeout or helpers.default_timeout
  local cmd = table.concat({
    "t0=$(date +%s%N);",
    "timeout -k 5 " .. limit, table.concat(words, " "),
    ">" .. helpers.quote(outf), "2>" .. helpers.quote(errf), "</dev/null;",
    "rc=$?; t1=$(date +%s%N); echo \"$rc $t0 $t1\"",
  }, " ")
  local p = assert(io.popen(cmd, "r"))
  local status = p:read("a")
  p:close()
  local rc, t0, t1 = status:match("(%d+) (%d+) (%d+)")
  local res = {
    out = helpers.read_file(outf) or "",
    err = helpers.read_file(errf) or "",
    code = tonumber(rc),
    elapsed = (tonumber(t1) - tonumber(t0)) / 1e9,
  }
  res.timed_out = res.code == 124
  res.lines = helpers.split_lines(res.out)
  os.remove(outf)
  os.remove(errf)
  return res
end

-- Inline text (anything containing a newline) goes to a temp file; otherwise
-- `script` is a path.
local function with_script(script, fn)
  local path, temp = script, false
  if script:find("\n", 1, true) then
    path, temp = helpers.write_script(script), true
  end
  local res = fn(path)
  res.script = path
  if temp then os.remove(path) end
  return res
end

-- luapool run <script> <args...> <flags...>
-- opts.flags: extra words after the arguments; opts.workers / opts.order /
-- opts.format: shorthands for those flags; opts.timeout: kill after seconds.
function helpers.run(script, args, opts)
  opts = opts or {}
  return with_script(script, function(path)
    local argv = { "run", path }
    for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
    if opts.workers then argv[#argv + 1] = "--workers"; argv[#argv + 1] = tostring(opts.workers) end
    if opts.order then argv[#argv + 1] = "--order"; argv[#argv + 1] = opts.order end
    if opts.format then argv[#argv + 1] = "--format"; argv[#argv + 1] = opts.format end
    for _, f in ipairs(opts.flags or {}) do argv[#argv + 1] = f end
    return helpers.exec(argv, opts)
  end)
end

-- Runs `luapool run <script text> <words...>` in the background while the
-- shell text `during` acts on it ($pid is the run's process id; it may set
-- variables), then waits for it. `report` is shell text echoing what the
-- caller needs after `rc` (the run's exit code) is set. Returns the output
-- (stdout, or stdout and stderr with opts.merge) and what `report` echoed.
function helpers.run_while(script, words, during, report, opts)
  opts = opts or {}
  local path = helpers.write_script(script)
  local out = helpers.tmpname(".out")
  local argv = { helpers.quote(helpers.bin), "run", helpers.quote(path) }
  for _, w in ipairs(words) do argv[#argv + 1] = helpers.quote(w) end
  local cmd = table.concat(argv, " ") .. " > " .. helpers.quote(out) ..
    (opts.merge and " 2>&1" or " 2>/dev/null") .. " & pid=$!; " .. during ..
    "; wait $pid; rc=$?; " .. report
  local p = io.popen(cmd)
  local status = p:read("a")
  p:close()
  local text = helpers.read_file(out) or ""
  os.remove(out)
  os.remove(path)
  return text, status
end

-- Runs a script in worker processes while a random worker is killed with
-- SIGKILL every 200 ms, until the run ends or `max_kills` have been made.
-- Only `luapool __worker` children are targets: under a sanitizer the
-- engine has other children at exit (LeakSanitizer's tracer), and killing
-- one leaves the engine waiting for it for ever.
-- Returns the output (stdout and stderr), the exit code and the kills made.
function helpers.run_killing_workers(script, words, max_kills)
  local text, status = helpers.run_while(script, words,
    "kills=0; while [ $kills -lt " .. (max_kills or 1000000) .. " ] && kill -0 $pid 2>/dev/null; " ..
    "do sleep 0.2; k=$(pgrep -P $pid -f __worker | shuf -n 1); " ..
    "[ -n \"$k\" ] && kill -9 $k 2>/dev/null && kills=$((kills+1)); done",
    "echo \"$rc $kills\"", { merge = true })
  local rc, kills = status:match("^(%d+) (%d+)")
  return text, rc, tonumber(kills), status
end

-- How many keys a table has.
function helpers.count_keys(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- The lines of text that are not plain numbers, the first 40: what a run
-- whose records are numbers said besides them.
function helpers.not_numbers(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if not line:match("^%d+$") and #out < 40 then out[#out + 1] = line end
  end
  return table.concat(out, "\n")
end

-- A random tree of tasks for order specs: each task prints, emits (at a
-- random priority), sleeps and spawns children at random, awaiting some
-- and not others, from a generator seeded per task; main(seed) emits the
-- tree's total. Nobody knows its size in advance.
helpers.RANDOM_TREE = [[
local luapool = require "luapool"
local function rng(s)
  return function(n)
    s = (s * 1103515245 + 12345) % 2147483648
    return s % n
  end
end
function node(seed, depth, path)
  local r = rng(seed)
  local futures = {}
  for step = 1, 1 + r(4) do
    local what = r(6)
    if what == 0 then print(path .. " print " .. step)
    elseif what == 1 then luapool.emit({ path = path, step = step }, r(3))
    elseif what == 2 then luapool.sleep(r(3) / 1000)
    elseif depth < 5 then
      local f = luapool.spawn(node, seed * 31 + step, depth + 1, path .. "." .. step)
      if what == 3 then futures[#futures + 1] = f end
    end
  end
  local sum = 0
  for _, f in ipairs(futures) do sum = sum + f:get() end
  luapool.emit(path .. " end " .. sum)
  return sum + 1
end
function main(seed) luapool.emit("total " .. node(tonumber(seed), 0, "r")) end
]]

-- luapool check <script>
function helpers.check(script, opts)
  return with_script(script, function(path)
    return helpers.exec({ "check", path }, opts)
  end)
end

-- The 50 lines the sequential 5x3x2 nested loop (examples/nested_loops.lua)
-- prints, in its order.
function helpers.nested_loop_lines()
  local lines = {}
  for i = 0, 4 do
    lines[#lines + 1] = ">task1 " .. i
    for j = 0, 2 do
      lines[#lines + 1] = "\t>>task2 " .. j
      for k = 0, 1 do lines[#lines + 1] = "\t\t>>>task3 " .. k end
    end
  end
  return lines
end

-- A short description of a run for assertion messages.
local function clip(s)
  if #s > 4000 then return s:sub(1, 4000) .. "\n... (" .. #s - 4000 .. " more bytes)\n" end
  return s
end

function helpers.describe(res)
  return string.format("exit %s after %.2fs%s\n--- stdout\n%s--- stderr\n%s",
    tostring(res.code), res.elapsed or -1, res.timed_out and " (killed: timed out)" or "",
    clip(res.out), clip(res.err))
end

-- Lua text to paste at the top of inline scripts: requires the module and
-- defines `dump`, a deterministic serializer (math types, binary-safe
-- strings, sorted keys, shared sub-tables and cycles shown as #n / @n), so a
-- value and its copy that went through another task print the same line.
helpers.PRELUDE = [==[
local luapool = require "luapool"
local function dump(v, seen)
  seen = seen or { n = 0 }
  local t = type(v)
  if t == "string" then
    return '"' .. v:gsub("[^%w ]", function(c) return string.format("\\%03d", c:byte()) end) .. '"'
  elseif t == "number" then
    if math.type(v) == "integer" then return "i:" .. v end
    if v ~= v then return "f:nan" end
    if v == 0 and 1 / v < 0 then return "f:-0" end
    return "f:" .. string.format("%.17g", v)
  elseif t == "table" then
    if seen[v] then return "@" .. seen[v] end
    seen.n = seen.n + 1
    seen[v] = seen.n
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    local kd = {}
    for _, k in ipairs(keys) do kd[k] = dump(k, { n = 0 }) end
    table.sort(keys, function(a, b) return kd[a] < kd[b] end)
    local parts = {}
    for _, k in ipairs(keys) do
      parts[#parts + 1] = "[" .. dump(k, seen) .. "]=" .. dump(v[k], seen)
    end
    return "#" .. seen[v] .. "{" .. table.concat(parts, ",") .. "}"
  else
    return tostring(v):match("^%a+") or t
  end
end
local function dumpall(...)
  local parts, seen = { "n=" .. select("#", ...) }, { n = 0 }
  for i = 1, select("#", ...) do parts[#parts + 1] = dump((select(i, ...)), seen) end
  return table.concat(parts, " ")
end
local function oneline(x) return (tostring(x):gsub("\n", " | ")) end
]==]

-- Strips a leading "file:line: " position from an error message.
function helpers.strip_position(msg)
  return (msg:gsub("^[^\n:]*:%d+: ", ""))
end

function helpers.contains(haystack, needle)
  return haystack:find(needle, 1, true) ~= nil
end

return helpers
