-- The memory bound of held records (--hold, lp.open's hold): past it, records
-- waiting for their turn go to spill files under $TMPDIR and come back
-- exactly, tasks whose records wait for the output wait for room, a spill
-- file that cannot be written fails the run, and nothing is left on disk.
-- Every run passes a 1 MB bound by far (a few hundred thousand records of
-- about 100 bytes each); the cases where spilling is the point assert that
-- the run did spill, so a bound that never triggers fails them.
local helpers = require "helpers"

local HELD = helpers.root .. "/scripts/bench/held.lua"
local RECORDS = helpers.root .. "/scripts/bench/records.lua"
local N = 300000 -- records from held.lua: about 30 MB held, 30 times the bound
-- Every record made by main, so at the cursor: in priority order the host
-- holds them and writes sorted runs of them (its own spill file).
local PRIO_MAIN = helpers.write_script([[
local luapool = require "luapool"
function main(n)
  for i = 1, tonumber(n) do luapool.emit(i, (i * 7919) % 1000003) end
end
]])
teardown(function() os.remove(PRIO_MAIN) end)

-- The figures of --stats' records line: delivered, spilled, peak held (MB).
local function stats(res)
  local n, spilled, peak =
    res.err:match("records%s+(%d+) %(spilled to disk (%d+), peak held ([%d.]+) MB%)")
  assert(n, "no records line in --stats:\n" .. res.err)
  return tonumber(n), tonumber(spilled), tonumber(peak)
end

local function held(args, flags, opts)
  opts = opts or {}
  opts.flags = flags
  return helpers.run(HELD, args, opts)
end

local function ok(res)
  assert.are.equal(0, res.code, helpers.describe(res))
  return res
end

-- Runs shell text under bash (for pipes, limits and signals); $L is the
-- binary, $H held.lua. Returns what the text wrote on stdout.
local function bash(text)
  local p = assert(io.popen("bash -c " .. helpers.quote("L=" .. helpers.quote(helpers.bin) ..
    "; H=" .. helpers.quote(HELD) .. "; " .. text) .. " </dev/null"))
  local out = p:read("a")
  p:close()
  return out
end

-- Checks that the lines of text are the numbers 1..n, each once, in any
-- order.
local function each_once(text, n)
  local seen, count, sum = {}, 0, 0
  for line in text:gmatch("[^\n]+") do
    local v = math.tointeger(tonumber(line))
    assert(v and v >= 1 and v <= n, "not a record of 1.." .. n .. ": " .. line)
    assert(not seen[v], "a record twice: " .. line)
    seen[v] = true
    count, sum = count + 1, sum + v
  end
  assert.are.equal(n, count)
  assert.are.equal(n * (n + 1) // 2, sum)
end

local function tmpdir()
  local out = bash("mktemp -d")
  return (out:gsub("%s+$", ""))
end

local function entries(dir)
  return (bash("ls -A " .. helpers.quote(dir) .. " | wc -l"):gsub("%s+", ""))
end

describe("--hold in tree order", function()
  it("records behind a sleeping first task spill and come back as --workers 0 writes them", function()
    local r = ok(held({ N, 8, 0.3 }, { "--hold", "1m", "--workers", "2", "--stats" }))
    local n, spilled = stats(r)
    assert.are.equal(N + 1, n)
    assert.is_true(spilled > N // 2, "spilled to disk " .. spilled)
    local ref = ok(held({ N, 8, 0.3 }, { "--workers", "0" }))
    assert.is_true(r.out == ref.out, "the output differs from --workers 0")
    assert.are.equal("slept 0.3", r.lines[1])
    for i = 1, N do
      if r.lines[i + 1] ~= tostring(i) then
        error("line " .. (i + 1) .. ": " .. tostring(r.lines[i + 1]))
      end
    end
  end)

  -- The cursor reaches tasks still making records while the bound is taken
  -- by records made ahead of their turn: the run goes on at full speed. The
  -- timeout only guards a crawl (one record per host pass: minutes for
  -- this run, which takes about 2 s).
  it("a task at the cursor is not held back by records waiting for their turn #crawl", function()
    local n = 1000000
    local r = held({ n, 8, 0 }, { "--hold", "1m", "--workers", "2", "--stats" }, { timeout = 60 })
    assert.is_false(r.timed_out, "a crawl: killed after 60 s")
    ok(r)
    local got, spilled = stats(r)
    assert.are.equal(n, got)
    assert.is_true(spilled > 0)
    assert.are.equal(n, #r.lines)
  end)

  it("drops a failed attempt's spilled records and keeps the good one's once", function()
    local script = [[
local luapool = require "luapool"
function sleeper() luapool.sleep(0.3) luapool.emit("slept") end
function flaky(first, n)
  local attempt = luapool.counter("attempt " .. first):add()
  for i = first, first + n - 1 do luapool.emit(attempt * 10000000 + i) end
  print("attempt " .. attempt .. " of " .. first)
  if attempt == 1 then error("the first attempt fails") end
end
function main(n, tasks)
  n, tasks = tonumber(n), tonumber(tasks)
  luapool.spawn(sleeper)
  local per = n // tasks
  for t = 0, tasks - 1 do luapool.spawn({ retries = 1 }, flaky, t * per + 1, per) end
end
]]
    local r = ok(helpers.run(script, { N, 6 }, { workers = 2, flags = { "--hold", "1m", "--stats" } }))
    local n, spilled = stats(r)
    assert.are.equal(N + 7, n)
    -- Both attempts went to disk: more spilled than delivered.
    assert.is_true(spilled > n, "spilled to disk " .. spilled .. " of " .. n)
    local ref = ok(helpers.run(script, { N, 6 }, { workers = 0 }))
    assert.is_true(r.out == ref.out, "the output differs from --workers 0")
    assert.are.equal(N + 7, #r.lines)
    assert.are.equal("slept", r.lines[1])
    assert.are.equal("20000001", r.lines[2])
    assert.is_nil(r.out:find("\n1%d%d%d%d%d%d%d\n"), "a record of a failed attempt")
  end)

  local MIXED = [[
local luapool = require "luapool"
function sleeper(s) luapool.sleep(s) print("slept", s) end
function producer(first, n)
  for i = first, first + n - 1 do
    if i % 3 == 0 then print("line", i, "a\tb")
    elseif i % 3 == 1 then luapool.emit({ i = i, s = "v" .. i })
    else luapool.emit("s" .. i) end
  end
end
function main(n, tasks)
  n, tasks = tonumber(n), tonumber(tasks)
  luapool.spawn(sleeper, 0.3)
  local per = n // tasks
  for t = 0, tasks - 1 do luapool.spawn(producer, t * per + 1, per) end
end
]]
  for _, format in ipairs({ "text", "json" }) do
    it("print() and emit() records spill and come back exactly, --format " .. format, function()
      local n = 60000
      local r = ok(helpers.run(MIXED, { n, 6 },
        { workers = 2, format = format, flags = { "--hold", "1m", "--stats" } }))
      local got, spilled = stats(r)
      assert.are.equal(n + 1, got)
      assert.is_true(spilled > n // 2, "spilled to disk " .. spilled)
      local ref = ok(helpers.run(MIXED, { n, 6 }, { workers = 0, format = format }))
      assert.is_true(r.out == ref.out, "the output differs from --workers 0")
      local want = format == "text" and "line\t3\ta\tb"
        or '{"task":3,"name":"producer","priority":0,"value":"line\\t3\\ta\\tb"}'
      assert.are.equal(want, r.lines[4])
    end)
  end
end)

describe("--hold in priority order", function()
  local function run(script, args, flags)
    local words = { "--order", "priority", "--stats" }
    for _, f in ipairs(flags) do words[#words + 1] = f end
    return ok(helpers.run(script, args, { flags = words }))
  end

  -- The same records, spilled or not, inline or not: one order.
  local function same_three(script, args)
    local small = run(script, args, { "--hold", "1m", "--workers", "2" })
    local n, spilled = stats(small)
    assert.is_true(spilled > n // 2, "spilled to disk " .. spilled .. " of " .. n)
    local big = run(script, args, { "--hold", "1g", "--workers", "2" })
    local _, none = stats(big)
    assert.are.equal(0, none)
    local inline = run(script, args, { "--workers", "0" })
    assert.is_true(small.out == big.out, "--hold 1m and --hold 1g differ")
    assert.is_true(small.out == inline.out, "--hold 1m and --workers 0 differ")
    return small
  end

  it("merges records spilled behind a sleeper as one sort of everything would", function()
    local args = { N, 8, 0.3, 1 }
    local text = same_three(HELD, args)
    assert.are.equal(N + 1, #text.lines)
    -- The same run in JSON shows the priorities: ascending, and the values
    -- are the text lines, each record once.
    local json = run(HELD, args, { "--hold", "1m", "--workers", "2", "--format", "json" })
    assert.are.equal(N + 1, #json.lines)
    local last = -math.huge
    for i, line in ipairs(json.lines) do
      local p, v = line:match('"priority":([^,]+),"value":(.*)}$')
      p = assert(tonumber(p), line)
      if p < last then error("line " .. i .. " is out of order: " .. line) end
      last = p
      local want = i == 1 and '"slept 0.3"' or text.lines[i]
      if v ~= want then error("line " .. i .. ": " .. line .. ", not " .. want) end
    end
    assert.are.equal("slept 0.3", text.lines[1]) -- its task's priority, 0
    table.remove(text.lines, 1)
    each_once(table.concat(text.lines, "\n"), N)
  end)

  it("writes the records of the task at the cursor as sorted runs and merges them", function()
    local text = same_three(PRIO_MAIN, { N })
    local lines = text.lines
    assert.are.equal(N, #lines)
    for i = 2, N do
      local a, b = tonumber(lines[i - 1]), tonumber(lines[i])
      if (a * 7919) % 1000003 > (b * 7919) % 1000003 then error("line " .. i .. " is out of order") end
    end
    each_once(text.out, N)
  end)
end)

describe("--hold in completion order", function()
  it("delivers every record once to a slow reader, and the bound holds", function()
    local out, err = helpers.tmpname(".out"), helpers.tmpname(".err")
    local status = bash("timeout -k 5 60 \"$L\" run \"$H\" " .. N ..
      " 8 0 --order completion --hold 1m --workers 2 --stats 2>" .. helpers.quote(err) ..
      " | (sleep 1; cat) >" .. helpers.quote(out) .. "; echo ${PIPESTATUS[0]}")
    local res = { out = helpers.read_file(out), err = helpers.read_file(err), code = tonumber(status) }
    os.remove(out)
    os.remove(err)
    assert.are.equal(0, res.code, helpers.describe(res))
    each_once(res.out, N)
    local n, spilled, peak = stats(res)
    assert.are.equal(N, n)
    assert.are.equal(0, spilled) -- they wait for the output: never on disk
    -- 1 MB, and 64 KB batches per thread not yet counted: a wide margin.
    assert.is_true(peak <= 4, "peak held " .. peak .. " MB")
  end)

  it("delivers every record once into a file", function()
    local r = ok(held({ N, 8, 0 }, { "--order", "completion", "--hold", "1m", "--workers", "2" }))
    each_once(r.out, N)
  end)
end)

describe("--hold and a reader that goes away", function()
  for _, case in ipairs({
    { "tree", { N, 8, 0.3 }, "slept 0.3" },
    { "completion", { N, 8, 0 } },
  }) do
    it("| head -1 ends the run, --order " .. case[1], function()
      local out = bash("timeout -k 5 60 \"$L\" run \"$H\" " .. table.concat(case[2], " ") ..
        " --order " .. case[1] .. " --hold 1m --workers 2 2>/dev/null | head -1; " ..
        "echo \"status ${PIPESTATUS[0]}\"")
      local line, status = out:match("^([^\n]*)\nstatus (%d+)\n$")
      assert(line, out)
      status = tonumber(status)
      assert.is_true(status ~= 124 and status ~= 137, "killed by the timeout: a hang")
      if case[3] then assert.are.equal(case[3], line) end
    end)
  end
end)

describe("a spill that cannot be written", function()
  local spill_run = { N, 8, 0.3 }
  local flags = { "--hold", "1m", "--workers", "2" }

  it("fails the run when $TMPDIR does not exist", function()
    local r = held(spill_run, flags, { env = { TMPDIR = "/nonexistent/dir" } })
    assert.are.equal(1, r.code, helpers.describe(r))
    assert.is_truthy(r.err:find("spill file", 1, true), r.err)
    assert.is_truthy(r.err:find("/nonexistent/dir", 1, true), r.err)
  end)

  it("fails the run when $TMPDIR is a regular file", function()
    local file = helpers.tmpname(".file")
    helpers.write_file(file, "not a directory\n")
    local r = held(spill_run, flags, { env = { TMPDIR = file } })
    os.remove(file)
    assert.are.equal(1, r.code, helpers.describe(r))
    assert.is_truthy(r.err:find("spill file", 1, true), r.err)
    assert.is_truthy(r.err:find(file, 1, true), r.err)
  end)

  -- A worker's spill file (tree order), the host's sorted runs (priority).
  for _, case in ipairs({ { "tree", HELD, N .. " 8 0.3" }, { "priority", PRIO_MAIN, N } }) do
    it("fails the run with exit 1 past a file-size limit, --order " .. case[1], function()
      local err = helpers.tmpname(".err")
      -- stdout to /dev/null: the limit applies to the spill files alone.
      local status = bash("sh -c 'ulimit -f 64; exec timeout -k 5 60 \"$1\" run \"$2\" " ..
        case[3] .. " --order " .. case[1] .. " --hold 1m --workers 2' sh \"$L\" " ..
        helpers.quote(case[2]) .. " >/dev/null 2>" .. helpers.quote(err) .. "; echo $?")
      local text = helpers.read_file(err) or ""
      os.remove(err)
      assert.are.equal(1, tonumber(status), "exit " .. status .. text)
      assert.is_truthy(text:find("spill file", 1, true), text)
      assert.is_truthy(text:find("File too large", 1, true), text)
    end)
  end
end)

describe("spill files", function()
  it("leave nothing behind after a run that spilled", function()
    local dir = tmpdir()
    local r = ok(held({ N, 8, 0.3 }, { "--hold", "1m", "--workers", "2", "--stats" },
      { env = { TMPDIR = dir } }))
    local _, spilled = stats(r)
    assert.is_true(spilled > 0)
    assert.are.equal("0", entries(dir))
    os.remove(dir)
  end)

  it("leave nothing behind after a run killed with SIGKILL while it holds them", function()
    local dir = tmpdir()
    -- Killed once it has a spill file open in dir (already unlinked), while
    -- its first task sleeps: records wait on disk then.
    local out = bash("export TMPDIR=" .. helpers.quote(dir) .. "; " ..
      "\"$L\" run \"$H\" " .. N .. " 8 30 --hold 1m --workers 2 >/dev/null 2>&1 & pid=$!; " ..
      "seen=0; for i in $(seq 400); do " ..
      "if ls -l /proc/$pid/fd 2>/dev/null | grep -F \"$TMPDIR/\" | grep -q deleted; " ..
      "then seen=1; break; fi; sleep 0.05; done; " ..
      "kill -9 $pid; wait $pid 2>/dev/null; echo \"$seen $?\"")
    local seen, status = out:match("(%d) (%d+)")
    assert.are.equal("1", seen, "no spill file seen open in " .. dir)
    assert.are.equal("137", status)
    assert.are.equal("0", entries(dir))
    os.remove(dir)
  end)
end)

describe("--hold SIZE", function()
  for _, v in ipairs({ "0", "abc", "10k", "1048575" }) do
    it("refuses --hold " .. v .. " with exit 2", function()
      local r = helpers.run(RECORDS, { 10, 1 }, { flags = { "--hold", v } })
      assert.are.equal(2, r.code, helpers.describe(r))
      assert.are.equal("", r.out)
      assert.are.equal(1, #helpers.split_lines(r.err), r.err)
      assert.is_truthy(r.err:find("--hold", 1, true), r.err)
      assert.is_truthy(r.err:find("'" .. v .. "'", 1, true), r.err)
    end)
  end

  it("refuses --hold without a value with exit 2", function()
    local r = helpers.run(RECORDS, { 10, 1 }, { flags = { "--hold" } })
    assert.are.equal(2, r.code, helpers.describe(r))
    assert.are.equal(1, #helpers.split_lines(r.err), r.err)
    assert.is_truthy(r.err:find("--hold", 1, true), r.err)
  end)

  it("takes 1m and more", function()
    for _, v in ipairs({ "1m", "1048576", "2M", "1g" }) do
      local r = ok(helpers.run(RECORDS, { 10, 1 }, { workers = 2, flags = { "--hold", v } }))
      assert.are.equal(10, #r.lines)
    end
  end)

  it("--stats says spilled to disk 0 for a small run", function()
    local r = ok(helpers.run(RECORDS, { 1000, 4 }, { workers = 2, flags = { "--stats" } }))
    local n, spilled = stats(r)
    assert.are.equal(1000, n)
    assert.are.equal(0, spilled)
  end)
end)

describe("hold = in the host module", function()
  local cpath = os.getenv("LUAPOOL_CPATH") or (helpers.root .. "/build/lua/?.so")
  if os.getenv("LUAPOOL_NO_MODULE") == "1" then
    pending("luapool.so built with a sanitizer whose runtime cannot be preloaded into lua5.4")
    return
  end

  -- In a lua5.4 of its own, so its peak memory is this run's alone.
  local HOST = [==[
package.cpath = arg[1] .. ";" .. package.cpath
local lp = require "luapool"
local n, hold = tonumber(arg[2]), tonumber(arg[3])
local source = [[
local luapool = require "luapool"
local pad = string.rep("x", 200)
function producer(first, n)
  for i = first, first + n - 1 do
    if i % 5 == 0 then print(i, pad) else luapool.emit(pad .. i) end
  end
end
function main(n, tasks)
  local per = n // tasks
  for t = 0, tasks - 1 do luapool.spawn(producer, t * per + 1, per) end
end
]]
local function peak_kb()
  for l in io.lines("/proc/self/status") do
    local k = l:match("^VmHWM:%s+(%d+)")
    if k then return tonumber(k) end
  end
end
local seen = {} -- filled first: its growth is not the run's
for i = 1, n do seen[i] = false end
local before = peak_kb()
local pool <close> = assert(lp.open { workers = 2, source = source, hold = hold,
                                      order = "completion" })
pool:spawn("main", n, 8)
local count, sum, prints, most = 0, 0, 0, 0
local function drain() -- what one wait collected (records() waits first)
  local batch = 0
  for rec in pool:records() do
    batch = batch + 1
    if batch > most then most = batch end
    local v
    if rec.kind == "print" then
      v = tonumber(rec.text:match("^(%d+)\t"))
      prints = prints + 1
    else
      v = tonumber(rec.value:match("(%d+)$"))
    end
    assert(v and not seen[v], "twice or unknown: " .. rec.text)
    seen[v] = true
    count, sum = count + 1, sum + v
    if count % 1000 == 0 then -- a slow consumer
      local t = os.clock() + 0.001
      while os.clock() < t do end
    end
  end
  return batch
end
repeat until drain() == 0 and pool:wait(0) -- a wait that collects only when idle
drain()
local refused, err = pcall(lp.open, { workers = 1, source = source, hold = -1 })
print(count, sum, prints, most, peak_kb() - before, refused, err)
]==]

  local function host(n, hold)
    local path = helpers.write_script(HOST)
    local preload = os.getenv("LUAPOOL_MODULE_PRELOAD") -- a sanitizer build's runtime
    local p = io.popen((preload and "LD_PRELOAD=" .. helpers.quote(preload) .. " " or "") ..
      "lua5.4 " .. helpers.quote(path) .. " " .. helpers.quote(cpath) .. " " ..
      n .. " " .. hold .. " 2>&1")
    local out = p:read("a")
    local done, _, code = p:close()
    os.remove(path)
    assert.is_true(done, "exit " .. tostring(code) .. ": " .. out)
    local count, sum, prints, most, grew, refused, err =
      out:match("^(%d+)\t(%d+)\t(%d+)\t(%d+)\t(%-?%d+)\t(%a+)\t([^\n]*)\n$")
    assert(count, out)
    return tonumber(count), tonumber(sum), tonumber(prints), tonumber(most), tonumber(grew),
      refused, err
  end

  it("hold = 1 MB: a slow records() loop gets every record once; hold = -1 is refused", function()
    local n = 150000
    local count, sum, prints, _, _, refused, err = host(n, 1 << 20)
    assert.are.equal(n, count)
    assert.are.equal(n * (n + 1) // 2, sum)
    assert.are.equal(n // 5, prints)
    assert.are.equal("false", refused)
    assert.is_truthy(err:find("hold must be >= 0", 1, true), err)
  end)

  it("hold = 1 MB: a slow records() loop runs in bounded memory #hostqueue", function()
    local n = 150000
    local count, _, _, most, grew = host(n, 1 << 20)
    assert.are.equal(n, count)
    -- About 40 MB of records in all (without a bound, memory grows by 60
    -- MB and more). 1 MB holds about 3500 of them: one wait copies into
    -- the module's queue what the engine held, not what the tasks make
    -- while it copies. Wide margins.
    assert.is_true(most <= 12000, most .. " records collected by one wait")
    if not helpers.sanitized() then -- a sanitizer's peak is not luapool's
      assert.is_true(grew < 24 * 1024, "peak memory grew by " .. grew .. " KB")
    end
  end)
end)
