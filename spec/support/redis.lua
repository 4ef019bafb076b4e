-- A redis-server of a spec's own, for the broker's specs: on a free loopback
-- port, in a temporary directory, without persistence unless asked. Nothing
-- here touches a system Redis or port 6379.
--
--   local redis = require "support.redis"
--   local r = redis.start{ aof = true, password = "pw", user = "alice", maxmemory = "20mb" }
--   ... r.port, r.url, r:cli("HSET", "lp:workers", "w1", "h 1 1 0 0") ...
--   r:stop()   -- always: in a finally() or teardown (redis.stop_all() stops them all)
--
-- r:restart() stops it and starts it again on the same port and directory
-- (with aof, the data is kept); r:kill() ends it with SIGKILL (r:restart()
-- may follow); r:stop() ends it and removes its directory. Only the Lua
-- standard library, the shell, redis-server, redis-cli and python3 (for a
-- free port) are used.

local redis = {}

local function quote(s)
  s = tostring(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok and 0 or code
end

local function sleep(s) os.execute("sleep " .. s) end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Whether process pid is running (a zombie is not: nobody may reap it here).
local function alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  local state = stat and stat:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- Waits up to `seconds` for fn() to be true; what fn returned last.
local function wait_for(seconds, fn)
  local steps = math.ceil(seconds / 0.05)
  for _ = 1, steps do
    local v = fn()
    if v then return v end
    sleep(0.05)
  end
  return fn()
end

-- A loopback port nothing listens on now (the kernel's pick). Another
-- program may take it before we do: start() retries.
function redis.free_port()
  local out = capture("python3 -c 'import socket; s = socket.socket(); " ..
    "s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])'")
  return assert(tonumber(out:match("%d+")), "no free port: " .. out)
end

-- user and password as a URL holds them (%-encoded).
local function encode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local Server = {}
Server.__index = Server

local running = {} -- every server started and not yet stopped

function Server:log() return read_file(self.dir .. "/redis.log") or "" end

-- Starts redis-server on self.port and self.dir: true once it answers, or
-- false and why (the port taken, or its log).
function Server:launch()
  local o = self.opts
  local args = { "redis-server", "--port", self.port, "--bind", "127.0.0.1",
    "--dir", self.dir, "--logfile", self.dir .. "/redis.log", "--daemonize", "no",
    "--save", "", "--appendonly", o.aof and "yes" or "no" }
  if o.aof then
    -- Every write on disk before its reply: a kill loses nothing answered.
    for _, w in ipairs { "--appendfsync", "always" } do args[#args + 1] = w end
  end
  if o.password then
    for _, w in ipairs { "--requirepass", o.password } do args[#args + 1] = w end
  end
  if o.user then
    for _, w in ipairs { "--user", o.user, "on", ">" .. o.password, "~*", "&*", "+@all" } do
      args[#args + 1] = w
    end
  end
  if o.maxmemory then
    for _, w in ipairs { "--maxmemory", o.maxmemory, "--maxmemory-policy", "noeviction" } do
      args[#args + 1] = w
    end
  end
  for i, a in ipairs(args) do args[i] = quote(a) end
  os.remove(self.dir .. "/redis.log")
  local out = capture(table.concat(args, " ") .. " </dev/null >/dev/null 2>&1 & echo $!")
  self.pid = assert(tonumber(out:match("%d+")), "redis-server did not start: " .. out)
  local ready = wait_for(20, function()
    if self:log():find("Ready to accept connections", 1, true) then return "ready" end
    if not alive(self.pid) then return "gone" end
  end)
  if ready == "ready" then
    local pong = self:cli("PING")
    if pong:find("PONG", 1, true) then return true end
    return false, "it does not answer PING: " .. pong
  end
  if ready ~= "gone" then self:kill() end
  local log = self:log()
  if log:find("Address already in use", 1, true) then return false, "port taken" end
  return false, "redis-server did not start on port " .. self.port .. ":\n" .. log
end

-- opts: aof (bool), password, user (with password: an ACL user with every
-- right; the default user then needs the password too), maxmemory ("20mb").
function redis.start(opts)
  opts = opts or {}
  assert(not opts.user or opts.password, "a user needs a password")
  local dir = capture("mktemp -d /tmp/luapool-redis.XXXXXX"):match("[^\n]+")
  local self = setmetatable({ opts = opts, dir = dir }, Server)
  local why
  for _ = 1, 8 do
    self.port = redis.free_port()
    local ok
    ok, why = self:launch()
    if ok then
      running[self] = true
      local auth = ""
      if opts.user then
        auth = encode(opts.user) .. ":" .. encode(opts.password) .. "@"
      elseif opts.password then
        auth = ":" .. encode(opts.password) .. "@"
      end
      self.url = "redis://" .. auth .. "127.0.0.1:" .. self.port
      return self
    end
    if why ~= "port taken" then break end
  end
  os.execute("rm -rf " .. quote(dir))
  error(why, 2)
end

-- Runs redis-cli against the server with these words (as the URL's user):
-- its output (stdout and stderr) without the last newline, and its exit code.
function Server:cli(...)
  local words = { "redis-cli", "-h", "127.0.0.1", "-p", self.port }
  if self.opts.user then
    for _, w in ipairs { "--user", self.opts.user } do words[#words + 1] = w end
  end
  if self.opts.password then
    for _, w in ipairs { "--pass", self.opts.password, "--no-auth-warning" } do
      words[#words + 1] = w
    end
  end
  for i = 1, select("#", ...) do words[#words + 1] = tostring((select(i, ...))) end
  for i, w in ipairs(words) do words[i] = quote(w) end
  local out, code = capture(table.concat(words, " ") .. " </dev/null 2>&1")
  return (out:gsub("\n$", "")), code
end

-- Ends the process with `signal`, waiting (bounded) until it is gone.
function Server:signal(signal)
  if not self.pid or not alive(self.pid) then return end
  os.execute("kill -" .. signal .. " " .. self.pid .. " 2>/dev/null")
  if not wait_for(10, function() return not alive(self.pid) end) then
    os.execute("kill -KILL " .. self.pid .. " 2>/dev/null")
    wait_for(5, function() return not alive(self.pid) end)
  end
end

-- SIGKILL: no shutdown, nothing more written.
function Server:kill() self:signal("KILL") end

-- A clean shutdown (SIGTERM: with aof, the file is complete), then the same
-- server again: same port, same directory, same options.
function Server:restart()
  self:signal("TERM")
  local ok, why
  for _ = 1, 20 do -- the port is ours; whoever took it meanwhile lets go soon
    ok, why = self:launch()
    if ok or why ~= "port taken" then break end
    sleep(0.25)
  end
  if not ok then error("redis-server did not restart: " .. why, 2) end
end

function Server:stop()
  self:signal("TERM")
  running[self] = nil
  if self.dir then os.execute("rm -rf " .. quote(self.dir)) end
  self.dir = nil
end

-- Stops every server started here and not yet stopped (for a teardown).
function redis.stop_all()
  for server in pairs(running) do server:stop() end
end

return redis
