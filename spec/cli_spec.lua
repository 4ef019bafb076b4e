-- The luapool binary: commands, flags, script errors, exit codes, inline mode
-- and completion counting on trees of unknown size (SPEC §1, §5, §6, §7).
--
-- Assumptions where the SPEC is open (also listed in the spec report):
--  * --help and --version write to stdout; --version prints a dotted number.
--  * Usage errors (no command, unknown command, unknown flag, bad or missing
--    flag value) exit 2 and write a message to stderr; a bad flag or value
--    is one line naming the flag, the reason and `luapool --help`.
--  * An error raised by the script's top-level code is a load error: exit 2.
--  * A global `main` that is not a function counts as "without main".
--  * `luapool check` exits 0 for a good script, 2 for a bad one, and never
--    calls main.
--  * The error that ends a failed main (nobody awaits the root) is written to
--    stderr and the run exits 1, like any other unawaited failure.
--  * Records made before a failure are still written to stdout.
--  * --workers 0: a wait that nothing can satisfy fails the waiting task
--    with an error that says "deadlock" (so the run exits 1), at once.

local H = require "helpers"

local function basename(path) return path:match("[^/]*$") end

describe("luapool", function()
  describe("commands", function()
    it("--help exits 0 and names run and check", function()
      local res = H.exec({ "--help" })
      assert.are.equal(0, res.code, H.describe(res))
      assert.truthy(res.out:find("run", 1, true), H.describe(res))
      assert.truthy(res.out:find("check", 1, true), H.describe(res))
    end)

    it("--version exits 0 and prints a version", function()
      local res = H.exec({ "--version" })
      assert.are.equal(0, res.code, H.describe(res))
      assert.truthy(res.out:find("%d+%.%d+"), H.describe(res))
    end)

    it("without a command, or with an unknown one, exits 2 with a message", function()
      for _, argv in ipairs({ {}, { "frobnicate" }, { "run" } }) do
        local res = H.exec(argv)
        assert.are.equal(2, res.code, H.describe(res))
        assert.are_not.equal("", res.err, H.describe(res))
      end
    end)
  end)

  describe("refuses a script", function()
    it("that does not exist, exit 2 naming it", function()
      local res = H.exec({ "run", "/nonexistent/dir/missing_script.lua" })
      assert.are.equal(2, res.code, H.describe(res))
      assert.truthy(res.err:find("missing_script.lua", 1, true), H.describe(res))
    end)

    it("with a syntax error, exit 2 with file:line", function()
      local path = H.write_script("function main()\n  local x = = 1\nend\n")
      local res = H.run(path)
      local chk = H.check(path)
      os.remove(path)
      for _, r in ipairs({ res, chk }) do
        assert.are.equal(2, r.code, H.describe(r))
        assert.truthy(r.err:find(basename(path) .. ":2:", 1, true), H.describe(r))
      end
    end)

    it("whose top-level code raises, exit 2 with the message", function()
      local res = H.run("local x = 1\nerror('broken at load time')\nfunction main() end\n")
      assert.are.equal(2, res.code, H.describe(res))
      assert.truthy(res.err:find("broken at load time", 1, true), H.describe(res))
    end)

    it("with a long load error, exit 2 with the whole message", function()
      -- An error() string at load time and a syntax error near a long token:
      -- both were cut (at 511 and 1023 bytes).
      local long = string.rep("x", 3000)
      local raises = H.write_script('error("' .. long .. 'END")\nfunction main() end\n')
      local unfinished = H.write_script('local s = "' .. long .. 'END\nfunction main() end\n')
      for _, case in ipairs({ { raises, long .. "END\nstack traceback:" },
                              { unfinished, ":1: unfinished string near '\"" .. long .. "END'" } }) do
        local runs = { H.check(case[1]) }
        for _, flags in ipairs({ { "--workers", "1" }, { "--workers", "0" }, { "--processes", "1" } }) do
          runs[#runs + 1] = H.run(case[1], nil, { flags = flags })
        end
        for i, r in ipairs(runs) do
          if i > 1 or case[1] == unfinished then -- check does not run the top level
            assert.are.equal(2, r.code, H.describe(r))
            assert.truthy(r.err:find(case[2], 1, true), H.describe(r))
          end
        end
      end
      os.remove(raises)
      os.remove(unfinished)
    end)

    it("without main, exit 2 saying so", function()
      for _, text in ipairs({ "function helper() end\n", "main = 5\nfunction helper() end\n" }) do
        local res = H.run(text)
        assert.are.equal(2, res.code, H.describe(res))
        assert.truthy(res.err:find("main", 1, true), H.describe(res))
        local chk = H.check(text)
        assert.are.equal(2, chk.code, H.describe(chk))
      end
    end)

    it("that is a precompiled binary chunk, exit 2", function()
      local src = H.write_script('function main() print("ran") end\n')
      local luac_out = H.tmpname(".luac")
      local dumped = H.tmpname(".lua")
      assert.is_true(os.execute("luac5.4 -o " .. H.quote(luac_out) .. " " .. H.quote(src)) == true)
      H.write_file(dumped, string.dump(assert(load('function main() print("ran") end'))))
      local a, b = H.run(luac_out), H.run(dumped)
      for _, p in ipairs({ src, luac_out, dumped }) do os.remove(p) end
      for _, r in ipairs({ a, b }) do
        assert.are.equal(2, r.code, H.describe(r))
        assert.are.equal("", r.out, H.describe(r))
        assert.are_not.equal("", r.err, H.describe(r))
      end
    end)
  end)

  describe("flags", function()
    local script = 'function main() print("ran") end\n'

    -- One line: the flag, what it takes, what it got, and where the usage is.
    local function one_line(res)
      local lines = H.split_lines(res.err)
      return #lines == 1 and lines[1] or nil
    end

    it("bad --workers values exit 2 with one line naming the reason", function()
      for _, case in ipairs({ { { "--workers", "-1" }, "got '-1'" }, { { "--workers", "abc" }, "got 'abc'" },
                              { { "--workers", "1.5" }, "got '1.5'" }, { { "--workers" }, "got nothing" } }) do
        local flags, got = case[1], case[2]
        local res = H.run(script, nil, { flags = flags })
        assert.are.equal(2, res.code, table.concat(flags, " ") .. ": " .. H.describe(res))
        assert.are.equal("luapool: --workers: expected a whole number from 0 to 1024, " .. got ..
                         " (see luapool --help)", one_line(res), H.describe(res))
        assert.are.equal("", res.out)
      end
    end)

    it("every flag with a value says what it takes in one line", function()
      for _, case in ipairs({
        { { "--processes", "x" }, "--processes: expected a whole number from 0 to 1024, got 'x'" },
        { { "--threads", "0", "--processes", "1" }, "--threads: expected a whole number from 1 to 1024, got '0'" },
        { { "--retries", "-2" }, "--retries: expected a whole number from 0 to 1000000, got '-2'" },
        { { "--pool", "io" }, "--pool: expected NAME=threads:N or NAME=processes:N[xT], got 'io'" },
        { { "--pool", "io=procs:2" }, "--pool io=procs:2: " },
        { { "--order" }, "--order: expected tree, priority or completion, got nothing" },
        { { "--format", "yaml" }, "--format: expected text or json, got 'yaml'" },
        { { "--task-timeout", "soon" }, "--task-timeout: expected a positive number of seconds, got 'soon'" },
        { { "--memory-limit", "5q" }, "--memory-limit: expected a positive size in bytes (like 64m), got '5q'" },
        { { "--trace" }, "--trace: expected a file name, got nothing" },
      }) do
        local res = H.run(script, nil, { flags = case[1] })
        local line = one_line(res)
        assert.are.equal(2, res.code, H.describe(res))
        assert.truthy(line, H.describe(res))
        assert.are.equal("luapool: " .. case[2], line:sub(1, 9 + #case[2]), H.describe(res))
        assert.truthy(line:find(" %(see luapool %-%-help%)$"), H.describe(res))
      end
    end)

    it("an unknown flag exits 2 with one line naming it", function()
      local res = H.run(script, nil, { flags = { "--frobnicate" } })
      assert.are.equal(2, res.code, H.describe(res))
      assert.are.equal("luapool: unknown option '--frobnicate' (see luapool --help)", one_line(res),
                       H.describe(res))
    end)

    it("a --trace file that cannot be created names the system's reason before the run", function()
      local res = H.run('function main() print("ran") end\n', nil,
                        { flags = { "--trace", "/no/such/dir/t.json" } })
      assert.are.equal(2, res.code, H.describe(res))
      assert.are.equal("", res.out, H.describe(res))
      assert.are.equal("luapool: --trace /no/such/dir/t.json: No such file or directory", one_line(res),
                       H.describe(res))
    end)

    it("bad --order and --format values exit 2 naming the value", function()
      for _, flags in ipairs({ { "--order", "sideways" }, { "--format", "yaml" } }) do
        local res = H.run(script, nil, { flags = flags })
        assert.are.equal(2, res.code, H.describe(res))
        assert.truthy(res.err:find(flags[2], 1, true), H.describe(res))
      end
    end)

    it("good flag values are accepted", function()
      for _, flags in ipairs({ { "--workers", "3" }, { "--order", "tree" }, { "--order", "priority" },
                               { "--order", "completion" }, { "--format", "text" } }) do
        local res = H.run(script, nil, { flags = flags })
        assert.are.equal(0, res.code, H.describe(res))
        assert.are.same({ "ran" }, res.lines)
      end
    end)
  end)

  it("passes the extra arguments to main as strings", function()
    local res = H.run([[
function main(...)
  local luapool = require "luapool"
  luapool.emit("n=" .. select("#", ...))
  for i = 1, select("#", ...) do
    local a = select(i, ...)
    luapool.emit(type(a) .. " [" .. a .. "]")
  end
end
]], { "alpha", "12", "two words", "", "-x" }, { workers = 2 })
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.same({ "n=5", "string [alpha]", "string [12]", "string [two words]", "string []",
                      "string [-x]" }, res.lines)
  end)

  describe("check", function()
    it("accepts a good script without running main", function()
      local marker = H.tmpname(".marker")
      local res = H.check(string.format([[
function main() io.open(%q, "w"):close() print("ran") end
function helper() end
]], marker))
      local f = io.open(marker)
      local ran = f ~= nil
      if f then f:close() end
      os.remove(marker)
      assert.are.equal(0, res.code, H.describe(res))
      assert.is_false(ran)
      assert.falsy(res.out:find("ran\n", 1, true))
    end)
  end)

  describe("--format json", function()
    -- Reads JSON lines with Python's strict json module and turns each value
    -- back into bytes (the \udcXX escapes through surrogateescape); prints
    -- one line per record: the name's and the value's bytes in hex.
    local reader = [=[
import json, sys
def back(v):
    if isinstance(v, str): return v.encode("utf-8", "surrogateescape").hex()
    if isinstance(v, list): return [back(x) for x in v]
    if isinstance(v, dict): return {back(k): back(x) for k, x in v.items()}
    return v
for line in sys.stdin.buffer.read().decode("utf-8").splitlines():
    r = json.loads(line)
    print(back(r["name"]), json.dumps(back(r["value"]), sort_keys=True))
]=]
    local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

    it("is valid JSON for strings that are not UTF-8, and gives their bytes back", function()
      local res = H.run([[
local luapool = require "luapool"
_G["odd\254name"] = function() luapool.emit("from \255 it") end
function main()
  luapool.emit("\255")
  luapool.emit("ok \u{e9} \xe9 \xc3 \xed\xb3\xbf \xf4\x90\x80\x80 \xc1\xbf end")
  luapool.emit({ ["k\200ey"] = { "nested \193", { deep = "x\255" } }, plain = "\u{e9}" })
  print("printed \255")
  luapool.spawn("odd\254name")
end
]], nil, { workers = 2, format = "json" })
      assert.are.equal(0, res.code, H.describe(res))
      -- Valid UTF-8 throughout: every byte outside it became an escape.
      assert.truthy(utf8.len(res.out), H.describe(res))
      local py, input = H.tmpname(".py"), H.tmpname(".json")
      H.write_file(py, reader)
      H.write_file(input, res.out)
      local p = io.popen("python3 " .. H.quote(py) .. " < " .. H.quote(input) .. " 2>&1")
      local got = H.split_lines(p:read("a"))
      p:close()
      os.remove(py)
      os.remove(input)
      local main, json = hex("main"), function(v) return string.format('"%s"', hex(v)) end
      assert.are.same({
        main .. " " .. json("\255"),
        main .. " " .. json("ok \u{e9} \xe9 \xc3 \xed\xb3\xbf \xf4\x90\x80\x80 \xc1\xbf end"),
        main .. string.format(' {"%s": [%s, {"%s": %s}], "%s": %s}', hex("k\200ey"), json("nested \193"),
                              hex("deep"), json("x\255"), hex("plain"), json("\u{e9}")),
        main .. " " .. json("printed \255"),
        hex("odd\254name") .. " " .. json("from \255 it"),
      }, got, res.out)
    end)

    it("writes valid UTF-8 as it is", function()
      local res = H.run([[
local luapool = require "luapool"
function main() luapool.emit({ "caf\u{e9}", "\u{1F600}" }) end
]], nil, { workers = 1, format = "json" })
      assert.are.equal(0, res.code, H.describe(res))
      assert.are.same({ '{"task":1,"name":"main","priority":0,"value":["caf\u{e9}","\u{1F600}"]}' },
                      res.lines)
    end)
  end)

  describe("failures", function()
    it("an unawaited failing task goes to stderr with its name and exits 1", function()
      local res = H.run([[
local luapool = require "luapool"
function careless(x) error("disk on fire " .. x) end
function main()
  luapool.emit("before")
  luapool.spawn(careless, 17)
end
]], nil, { workers = 2 })
      assert.are.equal(1, res.code, H.describe(res))
      assert.truthy(res.err:find("careless", 1, true), H.describe(res))
      assert.truthy(res.err:find("disk on fire 17", 1, true), H.describe(res))
      assert.are.same({ "before" }, res.lines)
    end)

    it("a traceback shows each task's levels once, also for a child run inside its parent's get", function()
      -- With one worker the child is still on the parent's queue when the
      -- parent asks for it, and runs inline inside get(); its traceback used
      -- to go on through the parent's levels, which the parent's own
      -- traceback then showed again.
      local script = [[
local luapool = require "luapool"
function child() error("boom in child") end
function parent() return luapool.spawn(child):get() end
function main() luapool.spawn(parent) end
]]
      for _, flags in ipairs({ { "--workers", "1" }, { "--workers", "0" }, { "--processes", "1" } }) do
        local res = H.run(script, nil, { flags = flags })
        local what = table.concat(flags, " ") .. ": " .. H.describe(res)
        assert.are.equal(1, res.code, what)
        local function count(s)
          local n = 0
          for _ in res.err:gmatch(s) do n = n + 1 end
          return n
        end
        assert.are.equal(2, count("stack traceback:"), what)  -- the child's, then the parent's
        assert.are.equal(1, count("in function 'child'"), what)
        assert.are.equal(1, count("in function 'parent'"), what)
        assert.are.equal(1, count("in method 'get'"), what)
        -- The child's traceback ends at the child: the next line starts the parent's.
        assert.truthy(res.err:find("in function 'child'\n\t%[C%]: in %?\nstack traceback:\n"), what)
      end
    end)

    it("a failing main exits 1 with its message", function()
      local res = H.run("function main() error('main gave up') end\n", nil, { workers = 2 })
      assert.are.equal(1, res.code, H.describe(res))
      assert.truthy(res.err:find("main gave up", 1, true), H.describe(res))
    end)
  end)

  describe("--workers 0", function()
    it("runs inline: the output is the sequential order", function()
      local res = H.run([[
local luapool = require "luapool"
function task3(i) print("\t\t>>>task3 " .. i) luapool.sleep(0.001) end
function task2(i) print("\t>>task2 " .. i) for j = 0, 1 do luapool.spawn(task3, j) end end
function task1(i)
  print(">task1 " .. i)
  local fs = {}
  for j = 0, 2 do fs[#fs + 1] = luapool.spawn(task2, j) end
  luapool.wait(fs)
end
function main() for i = 0, 4 do luapool.spawn(task1, i) end end
]], nil, { workers = 0, timeout = 30 })
      local want = H.nested_loop_lines()
      assert.are.equal(0, res.code, H.describe(res))
      assert.are.same(want, res.lines)
    end)

    it("reports a wait that nothing can satisfy as a deadlock instead of hanging", function()
      local res = H.run([[
local luapool = require "luapool"
function main() luapool.channel("never filled"):pop() end
]], nil, { workers = 0, timeout = 20 })
      assert.is_false(res.timed_out, H.describe(res))
      assert.are.equal(1, res.code, H.describe(res))
      assert.truthy(res.err:lower():find("deadlock", 1, true), H.describe(res))
    end)
  end)

  describe("a random tree of unknown size", function()
    -- Each node draws its number of children (0-4, none below depth 9) from
    -- an LCG seeded per node; the count can only be known by running it.
    local function lcg(s) return (s * 1103515245 + 12345) & 0x7fffffff end
    local function count(seed, depth)
      local s = lcg(seed)
      local n = depth < 9 and (s >> 16) % 5 or 0
      local total, deepest = 1, depth
      for i = 1, n do
        local c, d = count(lcg(s + i), depth + 1)
        total, deepest = total + c, math.max(deepest, d)
      end
      return total, deepest
    end

    local tree = [[
local luapool = require "luapool"
local function lcg(s) return (s * 1103515245 + 12345) & 0x7fffffff end
function node(seed, depth)
  local s = lcg(seed)
  local n = depth < 9 and (s >> 16) % 5 or 0
  local fs = {}
  for i = 1, n do fs[i] = luapool.spawn(node, lcg(s + i), depth + 1) end
  local total, deepest = 1, luapool.self().depth
  for i = 1, n do
    local c, d = fs[i]:get()
    total, deepest = total + c, math.max(deepest, d)
  end
  return total, deepest
end
function counted(seed, depth)
  local s = lcg(seed)
  local n = depth < 9 and (s >> 16) % 5 or 0
  for i = 1, n do luapool.spawn(counted, lcg(s + i), depth + 1) end
  luapool.counter("nodes"):add(1)
end
function main(seed)
  luapool.emit(string.format("count %d depth %d", luapool.spawn(node, tonumber(seed), 0):get()))
  luapool.spawn(counted, tonumber(seed), 0)
  luapool.join()
  luapool.emit(string.format("joined %d", luapool.counter("nodes"):get()))
end
]]

    for _, seed in ipairs({ 3, 10, 26 }) do
      for _, workers in ipairs({ 2, 1, 0 }) do
        it(string.format("seed %d on %d workers: the root counts every node", seed, workers), function()
          local n, deepest = count(seed, 0)
          assert.is_true(n > 100)          -- the tree is not trivial
          local res = H.run(tree, { tostring(seed) }, { workers = workers, timeout = 120 })
          assert.are.equal(0, res.code, H.describe(res))
          assert.are.same({
            string.format("count %d depth %d", n, deepest + 1),  -- main is depth 0
            string.format("joined %d", n),
          }, res.lines)
        end)
      end
    end
  end)
end)
