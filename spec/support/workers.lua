-- `luapool worker` processes of a spec's own, in the background, for the
-- broker's specs:
--
--   local workers = require "support.workers"
--   local w = workers.start(r.url, { "--workers", "2" })
--   ... w.pid ... w:signal("STOP") ... w:kill() ...
--   workers.stop_all()   -- always: in a finally() or teardown
--
-- A worker's stderr goes to a file of its own (w:log()).

local H = require "helpers"

local workers = { live = {} }

local Worker = {}
Worker.__index = Worker

function workers.start(url, flags, env)
  local log = H.tmpname(".worker.log")
  local words = { H.quote(H.bin), "worker", "--broker", H.quote(url) }
  for _, f in ipairs(flags or {}) do words[#words + 1] = H.quote(f) end
  local prefix = ""
  for k, v in pairs(env or {}) do prefix = prefix .. k .. "=" .. H.quote(v) .. " " end
  local p = assert(io.popen(prefix .. table.concat(words, " ") .. " >/dev/null 2>" .. H.quote(log) ..
    " </dev/null & echo $!"))
  local pid = tonumber(p:read("l"))
  p:close()
  local w = setmetatable({ pid = pid, logfile = log }, Worker)
  workers.live[#workers.live + 1] = w
  return w
end

function Worker:alive()
  local f = io.open("/proc/" .. self.pid .. "/stat")
  if not f then return false end
  local state = f:read("a"):match("^%d+ %b() (%a)")
  f:close()
  return state ~= "Z" and state ~= "X"
end

function Worker:signal(sig) os.execute("kill -" .. sig .. " " .. self.pid .. " 2>/dev/null") end

-- Waits up to `seconds` for it to leave; whether it did.
function Worker:wait(seconds)
  for _ = 1, math.ceil((seconds or 10) / 0.05) do
    if not self:alive() then return true end
    os.execute("sleep 0.05")
  end
  return not self:alive()
end

function Worker:kill()
  self:signal("KILL")
  self:wait(5)
end

function Worker:stop()
  self:signal("CONT")
  self:signal("TERM")
  if not self:wait(10) then self:kill() end
end

function Worker:log() return H.read_file(self.logfile) or "" end

function workers.stop_all()
  for _, w in ipairs(workers.live) do
    if w:alive() then w:stop() end
    os.remove(w.logfile)
  end
  workers.live = {}
end

return workers
