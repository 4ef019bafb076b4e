-- N records emitted from T tasks (N/T each), for the cost of report orders.
local luapool = require "luapool"
function producer(first, n)
  for i = first, first + n - 1 do luapool.emit(i) end
end
function main(n, tasks)
  n, tasks = tonumber(n), tonumber(tasks)
  local per = n // tasks
  for t = 0, tasks - 1 do luapool.spawn(producer, t * per + 1, per) end
end
