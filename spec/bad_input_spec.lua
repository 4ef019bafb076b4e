-- Bad input at scale: 1,000 random argument vectors, scripts of random
-- bytes, 10 MB scripts and precompiled chunks. Whatever it is given, the
-- binary ends within its time limit with a documented exit code (0, 1, 2)
-- and, when it refuses, a message on stderr that says what is wrong; never
-- a crash, a hang or a sanitizer report. Every input comes from a seeded
-- generator (LUAPOOL_BAD_INPUT_SEED), so a failure names its case and can be
-- replayed.
local helpers = require "helpers"

local SEED = tonumber(os.getenv("LUAPOOL_BAD_INPUT_SEED")) or 7
local ARGV_CASES = tonumber(os.getenv("LUAPOOL_ARGV_CASES")) or 1000
local LIMIT = 20 -- seconds per invocation; a hang is a failure, not a stuck suite

-- A scratch directory: the current directory of every run, holding the
-- scripts the argument vectors name (and anything an option might write).
local dir = helpers.tmpname(".bad")
assert(os.execute("mkdir -p " .. helpers.quote(dir)))
local function put(name, text)
  helpers.write_file(dir .. "/" .. name, text)
  return name
end

put("ok.lua", "function main(...) print(select('#', ...)) end\n")
put("emit.lua", [[
local luapool = require "luapool"
function leaf(i) luapool.emit(i) return i end
function main(n) for i = 1, tonumber(n) or 3 do luapool.spawn(leaf, i) end end
]])
put("fail.lua", "function main() error('failing on purpose') end\n")
put("syntax.lua", "function main(\n")
put("nomain.lua", "function helper() end\n")
put("toplevel.lua", "error('at the top level')\nfunction main() end\n")
put("binary.luac", string.dump(load("function main() print(1) end")))
assert(os.execute("mkdir -p " .. helpers.quote(dir .. "/adir")))

-- Runs every case (a list of argument lists) in one shell, each under
-- `timeout`, and returns { code =, err = } per case, in order.
local function run_all(cases)
  local sh = { "cd " .. helpers.quote(dir) .. " || exit 9", "e=$(mktemp)" }
  for i, argv in ipairs(cases) do
    local words = { helpers.quote(helpers.bin) }
    for _, a in ipairs(argv) do words[#words + 1] = helpers.quote(a) end
    sh[#sh + 1] = ("timeout -k 2 %d %s >/dev/null 2>\"$e\" </dev/null; rc=$?; "
      .. "printf '@@ %d %%d\\n' $rc; head -c 400 \"$e\" | tr '\\n\\0' '  '; echo"):format(
      LIMIT, table.concat(words, " "), i)
  end
  sh[#sh + 1] = "rm -f \"$e\""
  local file = helpers.tmpname(".sh")
  helpers.write_file(file, table.concat(sh, "\n") .. "\n")
  local p = io.popen("sh " .. helpers.quote(file))
  local out = p:read("a")
  p:close()
  os.remove(file)
  local results = {}
  for i, rc, err in out:gmatch("@@ (%d+) (%d+)\n([^\n]*)\n") do
    results[tonumber(i)] = { code = tonumber(rc), err = err }
  end
  return results
end

local function show(argv)
  local parts = {}
  for i, a in ipairs(argv) do parts[i] = ("%q"):format(a):gsub("\\\n", "\\n") end
  return "luapool " .. table.concat(parts, " ")
end

-- Every result must be a documented, explained ending.
local function check_all(cases, results, allowed)
  allowed = allowed or { [0] = true, [1] = true, [2] = true }
  local bad = {}
  for i, argv in ipairs(cases) do
    local r = results[i]
    local why
    if not r then
      why = "no result (the shell harness stopped)"
    elseif r.code == 124 or r.code == 137 then
      why = "did not end within " .. LIMIT .. " s"
    elseif not allowed[r.code] then
      why = "exit code " .. r.code
    elseif r.err:find("Sanitizer", 1, true) or r.err:find("runtime error", 1, true)
        or r.err:find("PANIC", 1, true) then
      why = "a sanitizer or Lua panic report"
    elseif r.code ~= 0 and not (r.err:match("^luapool: %S") or r.err:match("^usage: "))
        and not (argv[1] == "check" and r.code == 1) then -- check's warnings go to stdout
      why = "exit code " .. r.code .. " without a message"
    end
    if why then bad[#bad + 1] = ("case %d: %s: %s\n  stderr: %s"):format(i, show(argv), why, r and r.err or "") end
  end
  if #bad > 0 then
    error(#bad .. " of " .. #cases .. " cases went wrong:\n" .. table.concat(bad, "\n", 1, math.min(#bad, 20)), 0)
  end
end

describe("bad input", function()
  teardown(function() os.execute("rm -rf " .. helpers.quote(dir)) end)

  it(ARGV_CASES .. " random argument vectors end with an explained, documented exit", function()
    math.randomseed(SEED)
    local function bytes(n)
      local t = {}
      for i = 1, n do t[i] = string.char(math.random(1, 255)) end
      return table.concat(t)
    end
    local commands = { "run", "run", "run", "run", "check", "check", "--help", "-h", "--version",
      "help", "worker", "", "RUN", "-", "--", "ok.lua" }
    local scripts = { "ok.lua", "ok.lua", "emit.lua", "fail.lua", "syntax.lua", "nomain.lua",
      "toplevel.lua", "binary.luac", "adir", "missing.lua", "/dev/null", "" }
    local options = { "--workers", "--order", "--format", "--retries", "--task-timeout",
      "--memory-limit", "--processes", "--threads", "--pool", "--fail-fast", "--progress",
      "--no-progress", "--stats", "--help", "--version", "--", "-", "--workers=2", "-w", "---",
      "--order=tree" }
    local values = { "0", "1", "2", "3", "8", "-1", "1025", "99999999999999999999", "0x10", "nan",
      "inf", "-inf", "1e308", "1.5", "0.001", "", " ", "tree", "priority", "completion", "text",
      "json", "64m", "1k", "10g", "1x", "main=threads:2", "é", "\t", "a b" }
    local cases = {}
    for i = 1, ARGV_CASES do
      local argv = {}
      local shape = math.random(1, 10)
      if shape <= 7 then
        argv[1] = commands[math.random(#commands)]
        if argv[1] == "run" or argv[1] == "check" then argv[2] = scripts[math.random(#scripts)] end
      end
      for _ = 1, math.random(0, 6) do
        local k = math.random(1, 10)
        if k <= 4 then
          argv[#argv + 1] = options[math.random(#options)]
          argv[#argv + 1] = values[math.random(#values)]
        elseif k <= 6 then
          argv[#argv + 1] = options[math.random(#options)]
        elseif k <= 8 then
          argv[#argv + 1] = values[math.random(#values)]
        elseif k == 9 then
          argv[#argv + 1] = bytes(math.random(1, 20))
        else
          argv[#argv + 1] = ("x"):rep(math.random(1000, 20000))
        end
      end
      cases[i] = argv
    end
    local results = run_all(cases)
    check_all(cases, results)
    -- The vocabulary reaches every kind of ending.
    local seen = {}
    for _, r in pairs(results) do seen[r.code] = true end
    assert.is_true(seen[0] and seen[1] and seen[2], "the cases should end in 0, 1 and 2")
  end)

  it("scripts of random bytes are refused with file:line, by run and check", function()
    math.randomseed(SEED + 1)
    local cases = {}
    for i = 1, 100 do
      local n = math.random(0, 3000)
      local t = {}
      for j = 1, n do t[j] = string.char(math.random(0, 255)) end
      local s = table.concat(t)
      if i % 4 == 0 then s = "\27Lua" .. s end -- looks precompiled
      if i % 4 == 1 then s = "#!" .. s end -- a first line to skip
      if i % 4 == 2 then s = "function main()\n" .. s end -- a good start
      local name = put(("random%03d.lua"):format(i), s)
      cases[#cases + 1] = { "run", name, "--workers", "2" }
      cases[#cases + 1] = { "check", name }
    end
    local results = run_all(cases)
    check_all(cases, results, { [2] = true })
    for i, argv in ipairs(cases) do
      local msg = results[i].err
      assert.is_truthy(helpers.contains(msg, argv[2] .. ":"), show(argv) .. " names no file: " .. msg)
    end
  end)

  it("precompiled chunks are refused, with or without a first line", function()
    local chunk = string.dump(load("function main() print(1) end"))
    local cases = {
      { "run", put("dumped.lua", chunk) },
      { "check", "dumped.lua" },
      { "run", put("stripped.lua", string.dump(load("function main() end"), true)) },
      { "run", put("truncated.lua", chunk:sub(1, 12)) },
      { "run", put("shebang_binary.lua", "#!/usr/bin/env luapool\n" .. chunk) },
      { "check", "shebang_binary.lua" },
      { "run", "binary.luac", "--workers", "0" },
    }
    local results = run_all(cases)
    check_all(cases, results, { [2] = true })
    for i = 1, 4 do
      assert.is_truthy(helpers.contains(results[i].err, "precompiled (binary) chunks are not accepted"),
        show(cases[i]) .. ": " .. results[i].err)
    end
  end)

  it("a script whose global tables all refer to one another loads at once", function()
    -- Finding the task functions walks the global tables two levels deep;
    -- walking each table again under each of its names would take the cube
    -- of their number (here about 10^9 steps: far beyond the time limit).
    local name = put("aliases.lua", [[
for i = 1, 1000 do _G["alias" .. i] = _G end
for i = 1, 100 do _G["f" .. i] = function() return i end end
function main() print(f1() + f100()) end
]])
    -- And `main` keeps its own name when a global table is another name
    -- for the globals (it used to be found as "envN.main", and the script
    -- refused for having no main).
    local few = put("few_aliases.lua", [[
for i = 1, 20 do _G["env" .. i] = _G end
function main() print("main ran") end
]])
    local cases = { { "check", name }, { "run", name, "--workers", "2" }, { "run", few },
      { "run", few, "--workers", "0" }, { "check", few } }
    local results = run_all(cases)
    -- (check exits 1 for the globals these scripts make by name and read.)
    check_all(cases, results, { [0] = true, [1] = true })
    assert.are.same({ 0, 0, 0 }, { results[2].code, results[3].code, results[4].code })
    assert.is_falsy(results[5].err:find("no global function 'main'", 1, true), results[5].err)
  end)

  it("10 MB scripts load and run, or are refused quickly", function()
    -- A 10 MB table constructor, a 10 MB string on one line, 10 MB of
    -- definitions, and 10 MB of bytes that are not Lua.
    local parts = { "local data = {" }
    local size = 0
    local i = 0
    while size < 10 * 1024 * 1024 do
      i = i + 1
      local item = ("%d, 'item %d', {x = %d.5},\n"):format(i, i, i)
      parts[#parts + 1] = item
      size = size + #item
    end
    parts[#parts + 1] = "}\nfunction main() print(#data) end\n"
    local n_items = 3 * i
    put("big_table.lua", table.concat(parts))
    put("big_string.lua", "local s = '" .. ("a"):rep(10 * 1024 * 1024) .. "'\nfunction main() print(#s) end\n")
    local defs = {}
    -- (about 100 bytes each: a chunk holds at most 131071 functions)
    local pad = ("-"):rep(50)
    for k = 1, 10 * 1024 * 1024 // 100 do
      defs[k] = ("function f%07d() return %d end --%s\n"):format(k, k, pad)
    end
    put("big_defs.lua", table.concat(defs) .. "function main() print(f0000001() + f0000002()) end\n")
    put("big_garbage.lua", ("\1\2\3 not lua at all "):rep(10 * 1024 * 1024 // 20))
    local cases = {
      { "run", "big_table.lua", "--workers", "2" },
      { "run", "big_string.lua", "--workers", "2" },
      { "run", "big_defs.lua", "--workers", "2" },
      { "check", "big_defs.lua" },
      { "run", "big_garbage.lua", "--workers", "2" },
      { "run", "big_table.lua", "--workers", "2", "--memory-limit", "16m" },
    }
    local results = run_all(cases)
    check_all(cases, results)
    assert.are.same({ 0, 0, 0, 0, 2, 2 }, {
      results[1].code, results[2].code, results[3].code, results[4].code, results[5].code,
      results[6].code }, results[6].err)
    assert.is_truthy(results[5].err:match("^luapool: big_garbage%.lua:1:"), results[5].err)
    assert.is_truthy(helpers.contains(results[6].err, "not enough memory"), results[6].err)
    -- The outputs themselves, through the ordinary runner.
    local r = helpers.run(dir .. "/big_table.lua", {}, { workers = 2 })
    assert.are.same({ tostring(n_items) }, r.lines, helpers.describe(r))
    r = helpers.run(dir .. "/big_defs.lua", {}, { workers = 2 })
    assert.are.same({ "3" }, r.lines, helpers.describe(r))
  end)
end)
