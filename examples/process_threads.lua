-- Threads inside worker processes: every top-level job runs in a worker
-- process (a crash there fails that job alone), and the subtasks it spawns
-- run on that process's own threads, sleeping without holding a thread.
-- Totals are collated at every level: each subtask returns a number, each
-- job sums its subtasks, main sums the jobs.
--
--   luapool run examples/process_threads.lua --processes 2 --threads 4
--   luapool run examples/process_threads.lua 5 5 --processes 2 --threads 4
local luapool = require "luapool"

-- A subtask: waits a moment (an I/O call, in real life) and returns a value.
function thread_work(job, i)
  luapool.sleep(0.05 * ((job * 7 + i * 3) % 5))
  print(string.format("job %d, thread task %d done in process %d", job, i, luapool.self().pid))
  return job * 10 + i
end

-- A job: fans out to its subtasks and collates their values.
function process_work(job, nsub)
  local futures = {}
  for i = 1, nsub do futures[i] = luapool.spawn(thread_work, job, i) end
  local total = 0
  for _, f in ipairs(futures) do total = total + f:get() end
  print(string.format("job %d done: total %d", job, total))
  return total
end

function main(njobs, nsub)
  njobs, nsub = tonumber(njobs) or 5, tonumber(nsub) or 5
  local jobs = {}
  for job = 1, njobs do jobs[job] = luapool.spawn(process_work, job, nsub) end
  local total = 0
  for _, f in ipairs(jobs) do total = total + f:get() end
  print(string.format("all jobs done: total %d", total))
end
