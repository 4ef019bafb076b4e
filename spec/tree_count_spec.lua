-- Completion counting on trees whose size nobody knows in advance: each task
-- spawns a pseudo-random number of children (from a seed derived from its
-- own), without waiting for them, and counts itself in a shared counter. The
-- run must end only when every task has run, and the count must equal the
-- size computed by plain recursion over the same seeds.
local helpers = require "helpers"

-- The budget bounds the tree; the actual size is about a third of it.
local NODES = tonumber(os.getenv("LUAPOOL_TREE_NODES")) or 3000000

-- The same generator on both sides: children of a node with seed s.
local gen = [[
local function children(s, depth)
  s = (s * 1103515245 + 12345) % 2147483648
  if depth >= 40 then return s, 0 end
  return s, s % 7 -- 0..6 children, mean 3: a tree that grows, then thins
end
]]

-- Size of the tree from `seed` cut at `limit` nodes by a budget split.
local function expected(seed, budget)
  local f = load(gen .. [[
    local function size(s, depth, budget)
      local s2, n = children(s, depth)
      if budget <= 1 then return 1 end
      local total, left = 1, budget - 1
      for i = 1, n do
        local share = left // (n - i + 1)
        total, left = total + size(s2 + i, depth + 1, share), left - share
      end
      return total
    end
    return size(...)
  ]])
  return f(seed, 0, budget)
end

local script = gen .. [[
local luapool = require "luapool"
function node(s, depth, budget)
  luapool.counter("nodes"):add(1)
  local s2, n = children(s, depth)
  if budget <= 1 then return end
  local left = budget - 1
  for i = 1, n do
    local share = left // (n - i + 1)
    -- the child's own size is not known here: only its budget
    luapool.spawn(node, s2 + i, depth + 1, share)
    left = left - share
  end
end
function main(seed, budget)
  luapool.spawn(node, tonumber(seed), 0, tonumber(budget))
  luapool.join()
  print(luapool.counter("nodes"):get())
end
]]

describe("a random tree of unknown size", function()
  for _, seed in ipairs({ 7, 12345 }) do
    it("is counted exactly (seed " .. seed .. ", budget " .. NODES .. " nodes)", function()
      local want = expected(seed, NODES)
      assert.is_true(want > NODES // 10, "the generator should make a big tree")
      for _, workers in ipairs({ 2, 4 }) do
        local r = helpers.run(script, { seed, NODES }, { flags = { "--workers", workers } })
        assert.are.equal(0, r.code, r.err)
        assert.are.equal(tostring(want), r.lines[1])
      end
    end)
  end
end)
