-- Tasks for examples/embed/host.c: each word is weighed by the host's own
-- C function, in parallel; the records come back in tree order.
local luapool = require "luapool"
local host = require "host"

function weigh(word)
  luapool.emit(word .. " " .. host.weight(word))
end

function main(...)
  for _, word in ipairs({ ... }) do luapool.spawn(weigh, word) end
end

-- Called by the host with a table of words: their total weight.
function total(words)
  local sum = 0
  for _, word in ipairs(words) do sum = sum + host.weight(word) end
  return sum
end
