-- Results ordered by a value computed inside each task: every task emits
-- its result with the result as its priority, and --order priority prints
-- the records in ascending priority (ties in sequential order), whatever
-- order the tasks finished in.
--
--   luapool run examples/sorted_results.lua --order priority
local luapool = require "luapool"

function score(word)
  luapool.sleep(#word / 100)             -- some work
  local s = 0
  for c in word:gmatch(".") do s = s + c:byte() end
  luapool.emit(string.format("%-8s %d", word, s), s)
end

function main()
  for _, w in ipairs({ "pear", "fig", "banana", "kiwi", "apple", "plum", "cherry" }) do
    luapool.spawn(score, w)
  end
end
