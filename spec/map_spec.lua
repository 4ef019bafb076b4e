-- map, starmap, imap, imap_unordered (SPEC §2).
--
-- Assumptions where the SPEC is open (also listed in the spec report):
--  * map and starmap return one Lua list (a table) of results, result i for
--    element i; an empty input gives an empty table.
--  * The task function may be given by value or by name, as with spawn.
--  * imap / imap_unordered are generic-for iterators yielding (index, result),
--    index being the element's position in the list, like ipairs:
--    `for i, v in luapool.imap(fn, list) do`. (The index first means a nil
--    result cannot end the loop, and imap_unordered says which input each
--    result belongs to.) The engine's Lua layer does this too.
--  * When a task of map fails, map raises that task's error (its message in
--    the text) in the caller.
--  * chunksize changes how work is grouped, never the results or their order.

local H = require "helpers"

local function run_ok(body, args, opts)
  local res = H.run(H.PRELUDE .. body, args, opts or { workers = 2 })
  assert.are.equal(0, res.code, H.describe(res))
  return res
end

local function squares(n)
  local t = {}
  for i = 1, n do t[i] = tostring(i * i) end
  return table.concat(t, " ")
end

describe("map", function()
  it("returns results in list order", function()
    local res = run_ok([[
function square(x) return x * x end
function main()
  local list = {}
  for i = 1, 30 do list[i] = i end
  luapool.emit(table.concat(luapool.map(square, list), " "))
  luapool.emit(table.concat(luapool.map("square", list), " "))
end
]])
    assert.are.same({ squares(30), squares(30) }, res.lines)
  end)

  it("keeps list order when later elements finish first", function()
    local res = run_ok([[
function late(i) luapool.sleep(0.05 * (6 - i)) return i end
function main() luapool.emit(table.concat(luapool.map(late, { 1, 2, 3, 4, 5 }), " ")) end
]])
    assert.are.same({ "1 2 3 4 5" }, res.lines)
  end)

  it("gives the same results for any chunksize", function()
    local res = run_ok([[
function square(x) return x * x end
function main()
  local list = {}
  for i = 1, 50 do list[i] = i end
  for _, cs in ipairs({ 1, 3, 7, 50, 1000 }) do
    local r = luapool.map(square, list, { chunksize = cs })
    luapool.emit(#r .. ": " .. table.concat(r, " "))
  end
end
]])
    assert.are.equal(5, #res.lines, H.describe(res))
    for i = 1, 5 do assert.are.equal("50: " .. squares(50), res.lines[i]) end
  end)

  it("returns an empty table for an empty list", function()
    local res = run_ok([[
function square(x) return x * x end
function main()
  local r = luapool.map(square, {})
  luapool.emit(type(r) .. " " .. #r .. " " .. tostring(next(r)))
  luapool.emit(#luapool.map(square, {}, { chunksize = 4 }))
end
]])
    assert.are.same({ "table 0 nil", "0" }, res.lines)
  end)

  it("copies table elements and results", function()
    local res = run_ok([[
function describe_point(p) return { sum = p.x + p.y, tag = p.tag } end
function main()
  local r = luapool.map(describe_point, { { x = 1, y = 2, tag = "a" }, { x = 10, y = 20, tag = "b" } })
  luapool.emit(dump(r))
end
]])
    assert.are.same({ '#1{[i:1]=#2{["sum"]=i:3,["tag"]="a"},[i:2]=#3{["sum"]=i:30,["tag"]="b"}}' },
      res.lines)
  end)

  it("raises the error of a failing element", function()
    local res = run_ok([[
function picky(x) if x == 4 then error("four is not allowed") end return x end
function main()
  local ok, err = pcall(luapool.map, picky, { 1, 2, 3, 4, 5 })
  luapool.emit(tostring(ok) .. " " .. oneline(err))
end
]])
    assert.truthy(res.lines[1]:find("^false .*four is not allowed"), H.describe(res))
  end)
end)

describe("a chunk of a map", function()
  -- Chunk tasks are named as the call that made them, in every mode: an
  -- unawaited failure, --format json and the trace show what the script wrote.
  for _, flags in ipairs({ { "--workers", "2" }, { "--workers", "0" }, { "--processes", "2" } }) do
    it("is named luapool.map(fn) (" .. table.concat(flags, " ") .. ")", function()
      local res = H.run(H.PRELUDE .. [[
function sq(x) if x == 5 then error("five") end luapool.emit(x * x) return x * x end
function mapper() return luapool.starmap(sq, { { 4 }, { 5 }, { 6 } }, { chunksize = 2 }) end
function main()
  luapool.map(sq, { 1, 2 }, { chunksize = 2 })
  luapool.spawn(mapper)
end
]], {}, { format = "json", flags = flags })
      assert.are.equal(1, res.code, H.describe(res))
      assert.truthy(res.lines[1]:find('"name":"luapool.map(sq)"', 1, true), H.describe(res))
      assert.truthy(res.err:find("task 'luapool.starmap(sq)' (id ", 1, true), res.err)
      assert.falsy(res.err:find("task 'luapool._chunk'", 1, true), res.err)
    end)
  end
end)

describe("starmap", function()
  it("unpacks each element as the arguments", function()
    local res = run_ok([[
function add3(a, b, c) return a + b + (c or 0) end
function main()
  local args = { { 1, 2, 3 }, { 10, 20 }, { 100, 200, 300 } }
  luapool.emit(table.concat(luapool.starmap(add3, args), " "))
  luapool.emit(table.concat(luapool.starmap("add3", args, { chunksize = 2 }), " "))
  luapool.emit(#luapool.starmap(add3, {}))
end
]])
    assert.are.same({ "6 30 600", "6 30 600", "0" }, res.lines)
  end)
end)

describe("imap", function()
  it("yields results in list order", function()
    local res = run_ok([[
function late(i) luapool.sleep(0.04 * (8 - i)) return i * 10 end
function main()
  for _, cs in ipairs({ 1, 3 }) do
    local got = {}
    for i, v in luapool.imap(late, { 1, 2, 3, 4, 5, 6, 7 }, { chunksize = cs }) do
      got[#got + 1] = i .. "=" .. v
    end
    luapool.emit(table.concat(got, " "))
  end
end
]])
    local want = "1=10 2=20 3=30 4=40 5=50 6=60 7=70"
    assert.are.same({ want, want }, res.lines)
  end)

  it("yields the first result before the last task has finished", function()
    local res = run_ok([[
function nap(s)
  luapool.sleep(s)
  if s > 0 then luapool.counter("slow_done"):add(1) end
  return s
end
function main()
  local slow_done = luapool.counter("slow_done")
  -- the 1.0 s task is still asleep when the first result arrives
  for i, v in luapool.imap(nap, { 0, 1.0 }) do luapool.emit(i .. " " .. v .. " " .. slow_done:get()) end
end
]])
    assert.are.same({ "1 0 0", "2 1.0 1" }, res.lines)
  end)

  it("yields nothing for an empty list", function()
    local res = run_ok([[
function id(x) return x end
function main()
  local n = 0
  for _ in luapool.imap(id, {}) do n = n + 1 end
  for _ in luapool.imap_unordered(id, {}) do n = n + 1 end
  luapool.emit("count " .. n)
end
]])
    assert.are.same({ "count 0" }, res.lines)
  end)
end)

describe("imap_unordered", function()
  it("yields results in completion order", function()
    local res = run_ok([[
function nap(name, s) luapool.sleep(s) return name end
function pair(t) return nap(t[1], t[2]) end
function main()
  local got = {}
  for i, v in luapool.imap_unordered(pair, { { "slow", 0.6 }, { "fast", 0.2 }, { "middle", 0.4 } }) do
    got[#got + 1] = i .. "=" .. v
  end
  luapool.emit(table.concat(got, " "))
end
]])
    assert.are.same({ "2=fast 3=middle 1=slow" }, res.lines)
  end)

  it("yields every result exactly once", function()
    local res = run_ok([[
function square(x) return x * x end
function main()
  local list, got = {}, {}
  for i = 1, 40 do list[i] = i end
  local right = true
  for i, v in luapool.imap_unordered(square, list, { chunksize = 6 }) do
    got[#got + 1] = v
    right = right and v == list[i] * list[i]
  end
  table.sort(got)
  luapool.emit(table.concat(got, " "))
  luapool.emit("indices match " .. tostring(right))
end
]])
    assert.are.same({ squares(40), "indices match true" }, res.lines)
  end)

  it("a nil result does not end the loop", function()
    local res = run_ok([[
function odd_only(x) if x % 2 == 1 then return x end end
function main()
  local n, seen = 0, {}
  for i, v in luapool.imap(odd_only, { 1, 2, 3, 4 }) do n = n + 1 seen[#seen + 1] = tostring(v) end
  luapool.emit(n .. ": " .. table.concat(seen, " "))
  n = 0
  for i, v in luapool.imap_unordered(odd_only, { 1, 2, 3, 4 }) do n = n + 1 end
  luapool.emit(n)
end
]])
    assert.are.same({ "4: 1 nil 3 nil", "4" }, res.lines)
  end)
end)

-- The modes a map runs in: threads, and tasks in worker processes.
local MODES = { { "--workers", "2" }, { "--processes", "2" } }

describe("a failure caught around map", function()
  -- Items 2, 4, 6, ... fail; the caller catches the first error. The rest
  -- are cancelled or count as handled: nothing is reported, exit 0.
  local script = [[
function f(x)
  if x % 2 == 0 then error("bad " .. x) end
  luapool.sleep(0.01)
  return x
end
function slow(x) local t = os.clock() while os.clock() - t < 0.01 do end return x end
function main(which)
  local items = {}
  for i = 1, 6 do items[i] = i end
  local ok, err
  if which == "map" then ok, err = pcall(luapool.map, f, items)
  elseif which == "chunks" then ok, err = pcall(luapool.map, f, items, { chunksize = 2 })
  elseif which == "starmap" then
    local lists = {}
    for i = 1, 6 do lists[i] = { i } end
    ok, err = pcall(luapool.starmap, f, lists)
  elseif which == "imap" then
    ok, err = pcall(function() for _ in luapool.imap(f, items) do end end)
  elseif which == "imap_unordered" then
    ok, err = pcall(function() for _ in luapool.imap_unordered(f, items) do end end)
  elseif which == "break" then
    -- (imap_unordered's first result may be a failure: then it raises.)
    for _ in luapool.imap(f, items) do break end
    pcall(function() for _ in luapool.imap_unordered(f, items) do break end end)
    ok, err = false, "left early"
  elseif which == "timeout" then
    for i = 1, 100 do items[i] = i end
    ok, err = pcall(luapool.map, slow, items, { timeout = 0.001 })
  end
  luapool.emit(tostring(ok) .. " " .. tostring(err):match("[^\n]*"))
end
]]
  for _, mode in ipairs(MODES) do
    for _, which in ipairs({ "map", "chunks", "starmap", "imap", "imap_unordered", "break", "timeout" }) do
      it(which .. " (" .. mode[1] .. ")", function()
        local res = H.run(H.PRELUDE .. script, { which }, { flags = mode })
        assert.are.equal(0, res.code, H.describe(res))
        assert.are.equal("", res.err, H.describe(res))
        assert.are.equal(1, #res.lines, H.describe(res))
        assert.matches("^false ", res.lines[1])
        if which == "timeout" then
          assert.matches("timed out", res.lines[1])
        elseif which == "imap_unordered" then -- the first failure to finish
          assert.matches("bad [246]", res.lines[1])
        elseif which ~= "break" then
          assert.matches("bad 2", res.lines[1], 1, true)
        end
      end)
    end
  end
end)

describe("map's items start in list order", function()
  -- With one worker, item i is the i-th to start, and the first result of
  -- imap comes before the last item starts. Each item says when it starts
  -- and the loop when it gets a result; --order completion keeps the order
  -- they were said in. Run inside a task, so that with --processes 1 the
  -- items are queued inside the worker process.
  local script = [[
function item(i)
  print("start " .. i)
  local t0 = os.clock()
  while os.clock() - t0 < 0.02 do end
  return i
end
function run(kind)
  local items = {}
  for i = 1, 12 do items[i] = i end
  if kind == "map" then
    luapool.map(item, items)
  else
    for i in luapool[kind](item, items) do print("result " .. i) end
  end
end
function main(kind) luapool.spawn(run, kind):get() end
]]
  for _, mode in ipairs({ { "--workers", "1" }, { "--processes", "1" } }) do
    for _, kind in ipairs({ "map", "imap", "imap_unordered" }) do
      it(kind .. " (" .. mode[1] .. " 1)", function()
        local flags = { mode[1], mode[2], "--order", "completion" }
        local res = H.run(H.PRELUDE .. script, { kind }, { flags = flags })
        assert.are.equal(0, res.code, H.describe(res))
        local starts, first_result, last_start = {}, nil, nil
        for n, line in ipairs(res.lines) do
          local i = line:match("^start (%d+)$")
          if i then starts[#starts + 1] = tonumber(i) end
          if i == "12" then last_start = n end
          if not first_result and line:match("^result ") then first_result = n end
        end
        assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 }, starts, H.describe(res))
        if kind ~= "map" then
          assert.is_true(first_result ~= nil and first_result < last_start, H.describe(res))
        end
      end)
    end
  end
end)

describe("map misuse", function()
  local function failure(body, flags)
    local res = H.run(H.PRELUDE .. body, {}, { flags = flags or { "--workers", "2" } })
    assert.are.equal(1, res.code, H.describe(res))
    return res.err:match("failed: ([^\n]*)") or res.err
  end

  it("names the caller's line, the call and its argument", function()
    -- The script's lines: 1-21 are the prelude; main's calls follow.
    local body = [[
function sq(x) return x * x end
function main(which)
  luapool.map(function(x) return x end, { 1, 2 })
end
]]
    for _, flags in ipairs({ { "--workers", "2" }, { "--workers", "0" }, { "--processes", "2" } }) do
      local msg = failure(body, flags)
      assert.matches("^[^:]+%.lua:%d+: luapool%.map: argument 1: the function is not a task function", msg)
      assert.not_matches("luapool%.lua", msg)
    end
  end)

  it("names the variable of a nil task function", function()
    assert.matches("%.lua:%d+: luapool%.imap: argument 1: task function expected %(a name or a function%), got nil %(global 'fecth' is not defined%)",
      failure("function main() for _ in luapool.imap(fecth, { 1 }) do end end\n"))
    assert.matches("%.lua:%d+: luapool%.map: argument 1: .*got nil %(global 'fecth' is not defined%)",
      failure("function main() local r = luapool.map(fecth, { 1 }) end\n"))
  end)

  for _, case in ipairs({
    { "luapool.map(sq, 5)", "luapool%.map: argument 2: table expected, got number" },
    { "luapool.imap_unordered(sq, {1}, 7)", "luapool%.imap_unordered: argument 3: options table expected, got number" },
    { "luapool.map(sq, {1}, { chunksize = 0 })", "luapool%.map: option 'chunksize' must be a positive integer" },
    { "luapool.map(sq, {1}, { timout = 1 })", "luapool%.map: unknown option 'timout' %(known: priority, pool, timeout, retries, chunksize%)" },
    { "luapool.starmap(sq, { 1 })", "luapool%.starmap: item 1: a list of arguments expected, got number" },
    { "luapool.map(sq, { 1, function() end })", "luapool%.map: item 2: argument 1: cannot send a function" },
    { "luapool.map(sq, { 1, 2, { f = sq, g = function() end } }, { chunksize = 2 })", "luapool%.map: item 3: argument 1 %(at %.g%): cannot send a function" },
    { "luapool.imap(sq, { 1 }, { pool = 'nope' })", "luapool%.imap: no pool named 'nope'" },
    { "luapool.as_completed(5)", "luapool%.as_completed: argument 1: a list of futures expected, got number" },
    { "luapool.as_completed({ 1 })", "luapool%.as_completed: argument 1: item 1 is not a future" },
    { "luapool.as_completed({}, 'soon')", "luapool%.as_completed: argument 2: timeout %(seconds%) expected, got string" },
  }) do
    it(case[1], function()
      local msg = failure("function sq(x) return x end\nfunction main()\n  " .. case[1] .. "\nend\n")
      -- The prelude is 20-odd lines; the call is on main's first line.
      local line = select(2, (H.PRELUDE .. "function sq(x) return x end\nfunction main()\n"):gsub("\n", "")) + 1
      assert.matches("^[^:]+%.lua:" .. line .. ": " .. case[2], msg)
    end)
  end
end)
