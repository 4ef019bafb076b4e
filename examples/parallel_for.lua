-- A for-loop whose iterations run in parallel: each iteration counts the
-- primes below a limit (CPU work), and luapool.map hands the results back in
-- the order of the loop, whichever worker finished first.
--
--   luapool run examples/parallel_for.lua [iterations] --workers 4
local luapool = require "luapool"

-- One iteration of the loop body.
function count_primes(limit)
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

function main(iterations)
  iterations = tonumber(iterations) or 12
  local limits = {}
  for i = 1, iterations do limits[i] = 10000 * i end
  -- the sequential version would be:
  --   for i, limit in ipairs(limits) do results[i] = count_primes(limit) end
  local results = luapool.map(count_primes, limits)
  for i, limit in ipairs(limits) do
    print(string.format("%d: primes below %d = %d", i, limit, results[i]))
  end
end
