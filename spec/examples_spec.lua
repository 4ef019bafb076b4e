-- Runs every script in examples/ and checks what it prints, so the examples
-- people copy keep working. Lines made by several tasks are compared sorted;
-- only nested_loops is timed, because its point is that sleeping tasks do not
-- hold workers (about 3 s on 2 workers instead of 50 s).

local H = require "helpers"

local function example(name) return H.root .. "/examples/" .. name end

local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end

local function ackermann(m, n)
  if m == 0 then return n + 1 end
  if n == 0 then return ackermann(m - 1, 1) end
  return ackermann(m - 1, ackermann(m, n - 1))
end

local function has_line(lines, want)
  for _, l in ipairs(lines) do if l == want then return true end end
  return false
end

local function matching(lines, pattern)
  local out = {}
  for _, l in ipairs(lines) do if l:find(pattern) then out[#out + 1] = l end end
  return out
end

describe("examples", function()
  it("nested_loops.lua prints the 50 lines of the tree, in about 3 s on 2 workers", function()
    local res = H.run(example("nested_loops.lua"), nil, { workers = 2, timeout = 60 })
    assert.are.equal(0, res.code, H.describe(res))
    local want = H.nested_loop_lines()
    assert.are.equal(50, #want)
    assert.are.same(H.sorted(want), H.sorted(res.lines))
    assert.is_true(res.elapsed >= 2.9, H.describe(res))   -- three levels of 1 s sleeps
    assert.is_true(res.elapsed < 10, H.describe(res))
  end)

  it("process_threads.lua collates totals at every level, its jobs in worker processes", function()
    local res = H.run(example("process_threads.lua"), nil,
      { flags = { "--processes", "2", "--threads", "4" }, timeout = 60 })
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.equal(31, #res.lines)
    local mine = {}
    local total = 0
    for job = 1, 5 do
      local sub = 0
      for i = 1, 5 do sub = sub + job * 10 + i end
      total = total + sub
      assert.is_true(has_line(res.lines, string.format("job %d done: total %d", job, sub)))
      for _, l in ipairs(matching(res.lines, "^job " .. job .. ", thread task")) do
        mine[#mine + 1] = l:match("process (%d+)$")
      end
    end
    assert.are.equal("all jobs done: total " .. total, res.lines[31])
    assert.are.equal(25, #mine)
    -- Tree order: the same lines as a sequential run, process ids aside.
    local ref = H.run(example("process_threads.lua"), nil, { workers = 0 })
    local strip = function(lines)
      local out = {}
      for i, l in ipairs(lines) do out[i] = l:gsub("process %d+", "process P") end
      return out
    end
    assert.are.same(strip(ref.lines), strip(res.lines))
  end)

  it("parallel_for.lua collects the loop's results in order", function()
    local function count_primes(limit)
      local count = 0
      for n = 2, limit - 1 do
        local prime = true
        for d = 2, math.floor(math.sqrt(n)) do
          if n % d == 0 then prime = false; break end
        end
        if prime then count = count + 1 end
      end
      return count
    end
    local res = H.run(example("parallel_for.lua"), { "6" }, { workers = 2, timeout = 60 })
    assert.are.equal(0, res.code, H.describe(res))
    local want = {}
    for i = 1, 6 do
      want[i] = string.format("%d: primes below %d = %d", i, 10000 * i, count_primes(10000 * i))
    end
    assert.are.same(want, res.lines)
    assert.are.equal("1: primes below 10000 = 1229", res.lines[1])
  end)

  it("pool_api.lua computes fib and ackermann correctly with every call", function()
    local res = H.run(example("pool_api.lua"), nil, { workers = 2, timeout = 60 })
    assert.are.equal(0, res.code, H.describe(res))
    local lines = res.lines

    -- the values the tutorials quote
    assert.are.equal(0, fib(0)); assert.are.equal(1, fib(1)); assert.are.equal(75025, fib(25))
    assert.are.equal(9, ackermann(2, 3)); assert.are.equal(61, ackermann(3, 3))

    local first11 = {}
    for n = 0, 10 do first11[#first11 + 1] = tostring(fib(n)) end
    assert.truthy(has_line(lines, "map fib(0..10): " .. table.concat(first11, " ")), H.describe(res))
    assert.truthy(has_line(lines, "map fib(0..10): 0 1 1 2 3 5 8 13 21 34 55"), H.describe(res))

    local big = {}
    for n = 20, 25 do big[#big + 1] = tostring(fib(n)) end
    assert.truthy(has_line(lines, "map fib(20..25), chunksize 2: " .. table.concat(big, " ")),
      H.describe(res))

    assert.truthy(has_line(lines,
      "starmap ackermann: A(0,0)=1 A(1,1)=3 A(2,3)=9 A(3,3)=61 A(3,4)=125"), H.describe(res))

    local imap, unordered = {}, {}
    for n = 20, 25 do
      imap[#imap + 1] = string.format("imap fib(%d) = %d", n, fib(n))
      unordered[#unordered + 1] = string.format("imap_unordered fib(%d) = %d", n, fib(n))
    end
    assert.are.same(imap, matching(lines, "^imap fib"))                 -- in list order
    assert.are.same(H.sorted(unordered), H.sorted(matching(lines, "^imap_unordered")))

    assert.truthy(has_line(lines, "spawn ackermann(2,3) = 9"), H.describe(res))
    assert.truthy(has_line(lines, "spawn tree_fib(25) = 75025"), H.describe(res))
  end)

  it("collate.lua adds up the subtotals of every level", function()
    local res = H.run(example("collate.lua"), nil, { workers = 2, timeout = 60 })
    assert.are.equal(0, res.code, H.describe(res))
    local total, regions = 0, {}
    for r = 1, 4 do
      local sub = 0
      for c = 1, 3 do
        for n = 1, 5 do sub = sub + r * 100 + c * 10 + n end
      end
      regions[r] = string.format("region %d: %d", r, sub)
      total = total + sub
    end
    assert.are.equal(16380, total)
    assert.are.same(H.sorted(regions), H.sorted(matching(res.lines, "^region")))
    assert.are.equal("grand total: " .. total, res.lines[#res.lines])
  end)
end)
