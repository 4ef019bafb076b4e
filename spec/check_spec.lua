-- luapool check SCRIPT (SPEC §7): loads without running any task, lists the
-- task functions, reports syntax errors and a missing main (exit 2), and
-- warns (exit 1) of globals the script reads but never defines or assigns
-- inside functions, unknown luapool.* and standard library fields, and task
-- names it does not define. Also: what tasks share (README), as run.
local H = require "helpers"

-- The warnings of a check, each as "LINE text" with the file name cut.
local function warnings(res)
  local out = {}
  for line in res.out:gmatch("[^\n]+") do
    local n, text = line:match(":(%d+): warning: (.*)")
    if n then out[#out + 1] = n .. " " .. text end
  end
  return out
end

describe("luapool check", function()
  it("lists the task functions of a clean script, exit 0", function()
    local res = H.check(H.root .. "/examples/nested_loops.lua")
    assert.are.equal(0, res.code, H.describe(res))
    assert.truthy(res.out:find("4 task functions: main task1 task2 task3", 1, true),
                  H.describe(res))
    assert.falsy(res.out:find("warning", 1, true), H.describe(res))
  end)

  it("warns of globals read and never defined, with their lines, exit 1", function()
    local res = H.check([[
local luapool = require "luapool"
local n = SIZE or 10
function leaf(i)
  return mth.floor(i) + string.len("x")
end
function main()
  results = {}
  for i = 1, n do results[i] = luapool.spawn(leaf, i) end
  print(#results, undefined_thing, results)
end
]])
    assert.are.equal(1, res.code, H.describe(res))
    local warnings = {}
    for line in res.out:gmatch("[^\n]*warning[^\n]*") do
      warnings[#warnings + 1] = line:match(":(%d+): warning: global '([%w_]+)' is read") and
        (line:match(":(%d+):") .. " " .. line:match("global '([%w_]+)'"))
    end
    -- `results` is assigned (inside main: a warning of its own), `string`
    -- is a standard library, `luapool` is a local: none of them is reported.
    assert.are.same({ "2 SIZE", "4 mth", "9 undefined_thing" }, warnings)
    assert.truthy(res.out:find(":7: warning: global 'results' is assigned inside a function", 1,
                               true), H.describe(res))
    assert.truthy(res.out:find("2 task functions: leaf main", 1, true), H.describe(res))
  end)

  it("does not run main or any task", function()
    local marker = H.tmpname(".marker")
    local res = H.check(string.format([[
function main() io.open(%q, "w"):close() end
]], marker))
    local f = io.open(marker)
    if f then f:close() end
    os.remove(marker)
    assert.are.equal(0, res.code, H.describe(res))
    assert.is_nil(f)
  end)

  it("reports a syntax error with file:line, exit 2", function()
    local res = H.check("function main()\n  local x = = 1\nend\n")
    assert.are.equal(2, res.code, H.describe(res))
    assert.truthy(res.err:find("%.lua:2:"), H.describe(res))
  end)

  it("reports a missing main, exit 2, and still checks the globals", function()
    local res = H.check("function helper() return nope end\n")
    assert.are.equal(2, res.code, H.describe(res))
    assert.truthy(res.err:find("no global function 'main'", 1, true), H.describe(res))
    assert.truthy(res.out:find(":1: warning: global 'nope'", 1, true), H.describe(res))
  end)

  it("passes every example", function()
    local p = io.popen("ls " .. H.quote(H.root .. "/examples") .. "/*.lua")
    local n = 0
    for path in p:lines() do
      local res = H.check(path)
      assert.are.equal(0, res.code, path .. "\n" .. H.describe(res))
      n = n + 1
    end
    p:close()
    assert.is_true(n >= 5)
  end)

  it("warns of a global assigned inside a function, pointing at what tasks share", function()
    local res = H.check([[
local luapool = require "luapool"
LIMIT = 10
local function helper() return LIMIT end
function work(i)
  SEEN = (SEEN or 0) + 1
  return i + helper()
end
function main()
  CONFIG = { size = 3 }
  do TOTAL = 0 end
  for i = 1, 3 do TOTAL = TOTAL + luapool.spawn(work, i):get() end
end
]])
    assert.are.equal(1, res.code, H.describe(res))
    local hint = " is assigned inside a function: it stays in the Lua state of the worker that" ..
      " ran it (see \"What tasks share\" in the README)"
    -- LIMIT (top level) and main/work (defined at the top level) are not
    -- reported; each name once, at its first assignment.
    assert.are.same({ "5 global 'SEEN'" .. hint, "9 global 'CONFIG'" .. hint,
                      "10 global 'TOTAL'" .. hint }, warnings(res))
  end)

  it("warns of fields the luapool module does not have, with the closest name", function()
    local res = H.check([[
local luapool = require "luapool"
local lp = require("luapool")
local spawn = luapool.spwan
function leaf(i) return i end
function twice(i)
  local f = luapool.spawn(leaf, i)
  luapool.joinn()
  return f:get() * 2, luapool.self().worker, lp.countr("n")
end
function main()
  local r = lp.map(twice, { 1, 2 })
  if luapool.sleep_until then luapool.sleep(0) end
  return r, luapool.sequencr, luapool.channel("c"), luapool.qwxyz
end
]])
    assert.are.equal(1, res.code, H.describe(res))
    -- a local (top level), an upvalue (in task functions), another name for
    -- the module; a field only tested (`if luapool.sleep_until`) is not
    -- reported, and a name with nothing close gets no hint.
    assert.are.same({
      "3 luapool has no field 'spwan' (did you mean 'spawn'?)",
      "7 luapool has no field 'joinn' (did you mean 'join'?)",
      "8 luapool has no field 'countr' (did you mean 'counter'?)",
      "13 luapool has no field 'sequencr' (did you mean 'sequencer'?)",
      "13 luapool has no field 'qwxyz'",
    }, warnings(res))
  end)

  it("knows the luapool module's names from the module itself", function()
    -- The names a worker's module has, listed by a task; check must accept
    -- each of them and refuse each with a letter added.
    local run = H.run([[
local luapool = require "luapool"
function main()
  local names = {}
  for k in pairs(luapool) do names[#names + 1] = k end
  table.sort(names)
  print(table.concat(names, " "))
end
]], {}, { workers = 1 })
    assert.are.equal(0, run.code, H.describe(run))
    local names = {}
    for name in run.out:gmatch("[%w_]+") do names[#names + 1] = name end
    assert.is_true(#names >= 15, run.out)
    local lines = { "local luapool = require 'luapool'", "function main()" }
    for _, name in ipairs(names) do
      lines[#lines + 1] = ("  local a, b = luapool.%s, luapool.%sz"):format(name, name)
    end
    lines[#lines + 1] = "end"
    local res = H.check(table.concat(lines, "\n") .. "\n")
    local want = {}
    for i, name in ipairs(names) do
      want[i] = ("%d luapool has no field '%sz' (did you mean '%s'?)"):format(i + 2, name, name)
    end
    assert.are.same(want, warnings(res))
  end)

  it("warns of task names the script does not define", function()
    local res = H.check([[
local luapool = require "luapool"
local spawn = luapool.spawn
util = {}
function util.parse(s) return s end
function fetch(url) return url end
function main()
  local a = spawn("fecth", "x")
  local b = luapool.spawn({ priority = 1 }, "fethc", "x")
  local c = luapool.map("fetchh", { 1 })
  local d = luapool.starmap("utl.parse", { { 1 } })
  for i, v in luapool.imap("nothing_like_it", { 1 }) do end
  for i, v in luapool.imap_unordered("luapool.mapp", { 1 }) do end
  -- defined names, function values, and strings that are arguments
  local ok = { spawn("fetch", "x"), spawn(fetch, "not_a_task"), luapool.map("util.parse", {}),
               luapool.spawn({}, fetch, "nor_this"), luapool.spawn("luapool.map", "fetch", {}) }
end
function tail() return luapool.map("fetchx", {}) end
]])
    assert.are.equal(1, res.code, H.describe(res))
    assert.are.same({
      "7 task 'fecth' is not a global function of the script (did you mean 'fetch'?)",
      "8 task 'fethc' is not a global function of the script (did you mean 'fetch'?)",
      "9 task 'fetchh' is not a global function of the script (did you mean 'fetch'?)",
      "10 task 'utl.parse': the script defines no global 'utl' (did you mean 'util.parse'?)",
      "11 task 'nothing_like_it' is not a global function of the script",
      "12 luapool has no field 'mapp' (did you mean 'map'?)",
      "17 task 'fetchx' is not a global function of the script (did you mean 'fetch'?)",
    }, warnings(res))
  end)

  it("warns of fields the standard libraries do not have, and not of common idioms", function()
    local res = H.check([[
local fmt, pack = string.format, string.pack
local searchers = package.loaders or package.searchers
function string.trim(s) return (s:gsub("^%s+", "")) end
function main(s)
  local t = { s:upper(), string.trim(s), utf8.char(72), utf8.charpattern, math.pi }
  local co = coroutine.wrap(function() coroutine.yield(debug.traceback()) end)
  io.write(os.clock(), os.getenv("HOME") or "", math.maxinteger, table.unpack(t))
  local u = string.uper(s) .. table.inster
  return math.flor(1.5), os.tim(), co, searchers, fmt, pack, io.nope
end
]])
    assert.are.equal(1, res.code, H.describe(res))
    assert.are.same({
      "8 string has no field 'uper' (did you mean 'upper'?)",
      "8 table has no field 'inster' (did you mean 'insert'?)",
      "9 math has no field 'flor' (did you mean 'floor'?)",
      "9 os has no field 'tim' (did you mean 'time'?)",
      "9 io has no field 'nope'",
    }, warnings(res))
  end)
end)

describe("luapool check in the README", function()
  it("prints what the README shows for its example", function()
    local readme = H.read_file(H.root .. "/README.md")
    local script, shown = readme:match(
      "Each names the closest known name when one is close%. For this script:\n\n```lua\n(.-)```" ..
      "\n\n```\n%$ luapool check typo%.lua\n(.-)```")
    assert.truthy(script, "the example is not in the README")
    local path = H.tmpname(".lua")
    H.write_file(path, script)
    local res = H.check(path)
    os.remove(path)
    assert.are.equal(1, res.code, H.describe(res))
    assert.are.equal(shown, (res.out:gsub(path:gsub("%p", "%%%0"), "typo.lua")))
  end)
end)

-- The README's "What tasks share", checked as it runs.
describe("what tasks share", function()
  it("a global set in main is not seen by a task on another worker", function()
    -- main holds its worker (without suspending) until a task has run on
    -- the other one, so some tasks must run there.
    local res = H.run([[
local luapool = require "luapool"
function probe(main_worker)
  local me = luapool.self().worker
  if me ~= main_worker then luapool.counter("elsewhere"):add() end
  return me, CONFIG ~= nil
end
function main()
  CONFIG = { size = 10 }
  local me = luapool.self().worker
  local fs = {}
  for i = 1, 8 do fs[i] = luapool.spawn(probe, me) end
  local deadline = os.time() + 60
  while luapool.counter("elsewhere"):get() == 0 and os.time() < deadline do end
  for i = 1, 8 do
    local w, sees = fs[i]:get()
    print(w == me and "same" or "other", sees)
  end
end
]], {}, { workers = 2 })
    assert.are.equal(0, res.code, H.describe(res))
    local other = 0
    for _, line in ipairs(res.lines) do
      local where, sees = line:match("^(%a+)\t(%a+)$")
      assert.truthy(where, H.describe(res))
      -- a task on main's worker shares its state: it sees CONFIG
      assert.are.equal(where == "same" and "true" or "false", sees, H.describe(res))
      if where == "other" then other = other + 1 end
    end
    assert.are.equal(8, #res.lines, H.describe(res))
    assert.is_true(other >= 1, H.describe(res))
  end)

  it("the top level runs once in every worker state", function()
    for _, workers in ipairs({ 1, 3 }) do
      local res = H.run([[
io.stderr:write("top level\n")
function main() end
]], {}, { workers = workers })
      assert.are.equal(0, res.code, H.describe(res))
      local n = select(2, res.err:gsub("top level", ""))
      assert.are.equal(workers, n, H.describe(res))
    end
  end)

  it("a seed passed as an argument gives the same numbers on any worker", function()
    local script = [[
local luapool = require "luapool"
function draw(seed)
  math.randomseed(seed)
  return math.random(1, 1000000) .. " " .. math.random(1, 1000000)
end
function main()
  print(table.concat(luapool.map(draw, { 1, 2, 3, 4, 5, 6 }), " "))
end
]]
    local first
    for _, workers in ipairs({ 0, 2, 3 }) do
      local res = H.run(script, {}, { workers = workers })
      assert.are.equal(0, res.code, H.describe(res))
      first = first or res.out
      assert.are.equal(first, res.out)
    end
    assert.truthy(first:match("^%d+ %d+ %d+"), first)
  end)
end)
