-- --trace FILE: the run as Chrome trace-event JSON (SPEC §7). The file is
-- parsed and checked for what a viewer such as Perfetto relies on: every
-- task has slices on a worker track, slices on one track never overlap,
-- flow arrows go from a slice of the spawning task to the first slice of
-- the spawned one, and queue-depth counters are there.
local H = require "helpers"
local json = require "dkjson"

-- Runs `script` with --trace and returns the run and the decoded file.
local function traced(script, args, flags)
  local path = H.tmpname(".json")
  local f = { "--trace", path }
  for _, x in ipairs(flags or {}) do f[#f + 1] = x end
  local res = H.run(script, args, { flags = f })
  local text = H.read_file(path)
  os.remove(path)
  local doc, _, err = json.decode(text or "")
  assert(doc, "trace is not JSON: " .. tostring(err) .. "\n" .. H.describe(res))
  return res, doc
end

-- Slices by task id, slices per track, flows by id, counters.
local function index(doc)
  local ix = { tasks = {}, tracks = {}, s = {}, f = {}, counters = 0, names = {} }
  for _, e in ipairs(doc.traceEvents) do
    if e.ph == "X" then
      local id = e.args.id
      ix.tasks[id] = ix.tasks[id] or { name = e.name, parent = e.args.parent, depth = e.args.depth }
      table.insert(ix.tasks[id], e)
      ix.tracks[e.tid] = ix.tracks[e.tid] or {}
      table.insert(ix.tracks[e.tid], e)
    elseif e.ph == "s" then
      ix.s[e.id] = e
    elseif e.ph == "f" then
      assert.is_nil(ix.f[e.id], "one flow end per spawned task")
      ix.f[e.id] = e
    elseif e.ph == "C" then
      ix.counters = ix.counters + 1
      assert.is_number(e.args.queued)
      assert.is_number(e.args.suspended)
    elseif e.ph == "M" and e.name == "thread_name" then
      ix.names[e.tid] = e.args.name
    end
  end
  return ix
end

local EPS = 1e-6 -- microseconds are written with three decimals

-- The slice on track `tid` that contains time ts: [start, end).
local function enclosing(ix, tid, ts)
  for _, e in ipairs(ix.tracks[tid] or {}) do
    if e.ts <= ts + EPS and ts + EPS < e.ts + e.dur then return e end
  end
end

local function check_tracks(ix)
  for tid, slices in pairs(ix.tracks) do
    table.sort(slices, function(a, b) return a.ts < b.ts end)
    for i = 2, #slices do
      local prev, cur = slices[i - 1], slices[i]
      assert(prev.ts + prev.dur <= cur.ts + EPS,
             string.format("worker %d: slice of task %d [%f, %f] overlaps task %d at %f", tid,
                           prev.args.id, prev.ts, prev.ts + prev.dur, cur.args.id, cur.ts))
    end
  end
end

-- Every flow joins a slice of the parent to the first slice of the child.
local function check_flows(ix)
  local n = 0
  for id, s in pairs(ix.s) do
    local f = ix.f[id]
    assert(f, "flow " .. id .. " has an end")
    local child = ix.tasks[id]
    assert(child, "the spawned task " .. id .. " has slices")
    local from = enclosing(ix, s.tid, s.ts)
    assert(from, "the spawn of " .. id .. " lies in a slice")
    assert.are.equal(child.parent, from.args.id, "the spawn comes from the parent's slice")
    local to = enclosing(ix, f.tid, f.ts)
    assert(to and to.args.id == id, "the flow of " .. id .. " ends in the child's slice")
    for _, e in ipairs(child) do assert(e.ts >= to.ts - EPS, "at the child's first slice") end
    n = n + 1
  end
  return n
end

describe("--trace", function()
  it("traces the nested loop: every task, no overlaps, flows from parent to child", function()
    local res, doc = traced(H.root .. "/examples/nested_loops.lua", {}, { "--workers", "2" })
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.same(H.nested_loop_lines(), res.lines) -- the trace leaves stdout alone
    local ix = index(doc)
    local count, byname = 0, {}
    for id, t in pairs(ix.tasks) do
      count = count + 1
      byname[t.name] = (byname[t.name] or 0) + 1
      if t.name ~= "main" then assert(ix.tasks[t.parent], "the parent of " .. id .. " is traced") end
    end
    assert.are.equal(51, count)
    assert.are.same({ main = 1, task1 = 5, task2 = 15, task3 = 30 }, byname)
    check_tracks(ix)
    assert.are.equal(50, check_flows(ix))
    assert.are.equal("worker 1", ix.names[1])
    assert.are.equal("worker 2", ix.names[2])
    assert.is_true(ix.counters > 0, "queue-depth counters")
    assert.are.equal(0, doc.otherData.dropped_events)
  end)

  it("traces the tasks run in worker processes on tracks of their own", function()
    local res, doc = traced(H.root .. "/examples/nested_loops.lua", {},
                            { "--processes", "2", "--threads", "2" })
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.same(H.nested_loop_lines(), res.lines)
    local ix = index(doc)
    local count, remote = 0, 0
    for id, t in pairs(ix.tasks) do
      count = count + 1
      if t.name ~= "main" then assert(ix.tasks[t.parent], "the parent of " .. id .. " is traced") end
      -- main runs on the engine's thread (process 1 of the file), the
      -- rest in the worker processes.
      local pid = t[1].pid
      if t.name == "main" then
        assert.are.equal(1, pid)
      else
        assert.is_true(pid == 2 or pid == 3, "task " .. id .. " on pid " .. tostring(pid))
        assert.truthy(ix.names[t[1].tid]:match("^process [12] thread [12]$"), ix.names[t[1].tid])
        remote = remote + 1
      end
    end
    assert.are.equal(51, count)
    assert.are.equal(50, remote)
    check_tracks(ix)
    assert.are.equal(50, check_flows(ix)) -- main's spawns cross into the processes too
    assert.are.equal(0, doc.otherData.dropped_events)
  end)

  it("shows a task that waits as one slice per resumption", function()
    local res, doc = traced([[
local luapool = require "luapool"
function napper() for _ = 1, 3 do luapool.sleep(0.01) end end
function main() luapool.spawn(napper):get() end
]], {}, { "--workers", "2" })
    assert.are.equal(0, res.code, H.describe(res))
    local ix = index(doc)
    local napper, main
    for _, t in pairs(ix.tasks) do
      if t.name == "napper" then napper = t elseif t.name == "main" then main = t end
    end
    assert.are.equal(4, #napper) -- before the first sleep and after each
    assert.is_true(#main >= 2, "main waits in get: two slices at least")
    check_tracks(ix)
    assert.are.equal(1, check_flows(ix))
  end)

  it("keeps tracks apart when children run inline inside a waiting parent", function()
    local res, doc = traced([[
local luapool = require "luapool"
function fib(n)
  if n < 2 then return n end
  local a = luapool.spawn(fib, n - 1)
  local b = luapool.spawn(fib, n - 2)
  return a:get() + b:get()
end
function main() luapool.emit(fib(12)) end
]], {}, { "--workers", "2" })
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.same({ "144" }, res.lines)
    local ix = index(doc)
    local count = 0
    for _ in pairs(ix.tasks) do count = count + 1 end
    assert.are.equal(465, count) -- main and the 464 spawns (fib(12) itself is a call in main)
    check_tracks(ix)
    assert.are.equal(464, check_flows(ix))
  end)

  it("traces a sequential run (--workers 0) and a retried task", function()
    local res, doc = traced([[
local luapool = require "luapool"
local tries = 0
function flaky() tries = tries + 1; if tries < 3 then error("not yet") end return tries end
function leaf(i) return i end
function main()
  for i = 1, 3 do luapool.spawn(leaf, i) end
  luapool.emit(luapool.spawn({ retries = 2 }, flaky):get())
end
]], {}, { "--workers", "0" })
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.same({ "3" }, res.lines)
    local ix = index(doc)
    local flaky
    for _, t in pairs(ix.tasks) do if t.name == "flaky" then flaky = t end end
    assert.are.equal(3, #flaky, "one slice per attempt")
    assert.are.same({ 1 }, (function() local k = {} for tid in pairs(ix.tracks) do k[#k + 1] = tid end return k end)())
    check_tracks(ix)
    assert.are.equal(4, check_flows(ix))
  end)

  it("renders as an SVG timeline with scripts/trace_svg.lua", function()
    local path, svg = H.tmpname(".json"), H.tmpname(".svg")
    local res = H.run(H.root .. "/examples/nested_loops.lua", {},
                      { workers = 2, flags = { "--trace", path } })
    assert.are.equal(0, res.code, H.describe(res))
    local ix = index(json.decode(H.read_file(path)))
    local ok = os.execute("lua5.4 " .. H.quote(H.root .. "/scripts/trace_svg.lua") .. " " ..
                          H.quote(path) .. " -o " .. H.quote(svg))
    local text = H.read_file(svg) or ""
    os.remove(path)
    os.remove(svg)
    assert.is_true(ok == true)
    assert.truthy(text:find("^<svg "))
    assert.truthy(text:find("</svg>\n$"))
    local slices, titles, rows = 0, 0, 0
    for _, list in pairs(ix.tracks) do slices = slices + #list end
    for _ in text:gmatch("<title>") do titles = titles + 1 end
    for _ in text:gmatch("task3 %d+</text>") do rows = rows + 1 end
    assert.are.equal(slices, titles) -- a box with a tooltip per slice
    assert.are.equal(30, rows) -- a row per task: 30 of them run task3
  end)

  it("draws an SVG whose legend covers every depth, with map chunks named and elided rows counted",
     function()
    local path = H.tmpname(".json")
    local res = H.run([[
local luapool = require "luapool"
function down(n) if n > 0 then luapool.spawn(down, n - 1):get() end end
function sq(x) return x * x end
function main()
  luapool.spawn(down, 8):get()                       -- depths 1 to 9
  luapool.emit(#luapool.map(sq, { 1, 2, 3, 4, 5, 6 }, { chunksize = 2 }))
end
]], {}, { workers = 2, flags = { "--trace", path } })
    assert.are.equal(0, res.code, H.describe(res))
    local function render(...)
      local svg = H.tmpname(".svg")
      local words = { "lua5.4", H.root .. "/scripts/trace_svg.lua", path, "-o", svg, ... }
      for i, w in ipairs(words) do words[i] = H.quote(w) end
      assert.is_true(os.execute(table.concat(words, " ")) == true)
      local text = H.read_file(svg) or ""
      os.remove(svg)
      return text
    end
    local full, few = render(), render("--rows", "5")
    os.remove(path)
    -- main at 0, down at 1..9, the chunks at 1: ten depths, ten colours.
    local legend = full:match('<g class="legend%-depth">(.-)</g>')
    assert.truthy(legend, full)
    local labels = {}
    for l in legend:gmatch(">([%d,.]+)</text>") do labels[#labels + 1] = l end
    assert.are.same({ "0", "1", "2", "3", "4", "5", "6", "7", "8", "9" }, labels)
    -- The map's chunks show as what the script wrote, not the engine's name.
    assert.falsy(full:find("luapool._chunk", 1, true))
    assert.truthy(full:find("luapool%.map%(sq%) %d+</text>"), full)
    -- 13 tasks (main, 9 down, 3 chunks): with room for 5 rows, the picture
    -- says how many it leaves out.
    assert.falsy(full:find('class="elided"', 1, true))
    assert.truthy(few:find('<text [^>]*class="elided"[^>]*>13 tasks, more than the 5 that get a row each'), few)
  end)

  it("names the tracks of named pools after their pool", function()
    local res, doc = traced([[
local luapool = require "luapool"
function fetch(i) luapool.sleep(0.01) return i end
function main()
  local fs = {}
  for i = 1, 4 do fs[i] = luapool.spawn({ pool = "io" }, fetch, i) end
  for _, f in ipairs(fs) do f:get() end
end
]], {}, { "--workers", "2", "--pool", "io=threads:2" })
    assert.are.equal(0, res.code, H.describe(res))
    local ix = index(doc)
    assert.are.same({ "main 1", "main 2", "io 1", "io 2" }, ix.names)
    for _, t in pairs(ix.tasks) do
      if t.name == "fetch" then
        for _, e in ipairs(t) do assert.is_true(e.tid >= 3, "fetch runs on the io pool") end
      end
    end
    check_tracks(ix)
    assert.are.equal(4, check_flows(ix))
  end)

  it("refuses a file it cannot write, before running (exit 2)", function()
    local res = H.run("function main() print('ran') end\n", {},
                      { flags = { "--trace", "/nonexistent/dir/t.json" } })
    assert.are.equal(2, res.code, H.describe(res))
    assert.truthy(res.err:find("/nonexistent/dir/t.json", 1, true), H.describe(res))
    assert.are.same({}, res.lines)
  end)
end)
