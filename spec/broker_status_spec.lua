-- `luapool status --broker URL` (SPEC §9): the runs and workers a broker
-- holds, read from the keys of engine/broker/KEYS.md (written here by hand
-- with redis-cli), and the messages and exit codes of a bad URL, a broker
-- that is down and one that wants a password. Every spec starts and stops a
-- redis-server of its own (spec/support/redis.lua).

local H = require "helpers"
local redis = require "support.redis"

local function status(url)
  return H.exec({ "status", "--broker", url }, { timeout = 30 })
end

-- The cells of a table line, split on runs of two or more spaces.
local function cells(line)
  local out = {}
  for cell in (line .. "  "):gmatch("(.-)  +") do out[#out + 1] = cell end
  return out
end

-- The table lines of the output that start with `head` (its header line)
-- up to the next empty line.
local function table_lines(out, head)
  local lines, inside = {}, false
  for _, line in ipairs(H.split_lines(out)) do
    if line:sub(1, #head) == head then inside = true end
    if inside then
      if line == "" then break end
      lines[#lines + 1] = line
    end
  end
  return lines
end

local function now_ms()
  local p = io.popen("date +%s%3N")
  local ms = tonumber(p:read("l"))
  p:close()
  return ms
end

describe("luapool status --broker", function()
  local server
  after_each(function()
    if server then server:stop() end
    server = nil
  end)

  it("says an empty broker has no runs and no workers", function()
    server = redis.start()
    local res = status(server.url)
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.equal("broker redis://127.0.0.1:" .. server.port .. "\n\nno runs\n\nno workers\n",
      res.out, H.describe(res))
    assert.are.equal("", res.err)
  end)

  it("lists runs and workers in aligned columns", function()
    server = redis.start()
    local now = now_ms()
    local run, other = "00000000000000ab", "0123456789abcdef"
    server:cli("ZADD", "lp:runs", now - 65000, run)
    server:cli("HSET", "lp:{" .. run .. "}:meta", "script", "tree.lua", "state", "running",
      "started", now - 65000)
    server:cli("HSET", "lp:{" .. run .. "}:n", "done", 1200, "queued", 30, "running", 2,
      "failed", 1)
    server:cli("ZADD", "lp:runs", now - 5000, other)
    server:cli("HSET", "lp:{" .. other .. "}:meta", "script", "a-longer-name.lua", "state", "ok",
      "started", now - 5000, "ended", now - 800)
    server:cli("HSET", "lp:workers", "w-one", "box1 4242 4 " .. (now - 500) .. " 77",
      "w-two", "other-host 17 16 " .. now .. " 123456")

    local res = status(server.url)
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.equal("", res.err)

    local runs = table_lines(res.out, "RUN ")
    assert.are.equal(3, #runs, H.describe(res))
    assert.are.same({ "RUN", "SCRIPT", "STATE", "DONE", "QUEUED", "RUNNING", "FAILED", "ELAPSED" },
      cells(runs[1]))
    local first, second = cells(runs[2]), cells(runs[3])
    assert.are.same({ run, "tree.lua", "running", "1200", "30", "2", "1" },
      { table.unpack(first, 1, 7) })
    assert.truthy(first[8]:match("^1m0%ds$"), first[8]) -- 65 s and a little
    assert.are.same({ other, "a-longer-name.lua", "ok", "0", "0", "0", "0", "4.2s" }, second)

    local workers = table_lines(res.out, "WORKER ")
    assert.are.equal(3, #workers, H.describe(res))
    assert.are.same({ "WORKER", "HOST", "PID", "THREADS", "HEARTBEAT", "TASKS RUN" },
      cells(workers[1]))
    local w1, w2 = cells(workers[2]), cells(workers[3])
    assert.are.same({ "w-one", "box1", "4242", "4" }, { table.unpack(w1, 1, 4) })
    assert.are.equal("77", w1[6])
    assert.truthy(w1[5]:match(" ago$"), w1[5])
    assert.are.same({ "w-two", "other-host", "17", "16" }, { table.unpack(w2, 1, 4) })
    assert.are.equal("123456", w2[6])

    -- Aligned: text columns start together, number columns end together.
    for _, lines in ipairs({ runs, workers }) do
      for i = 2, #lines do assert.are.equal(#lines[1], #lines[i], lines[i]) end
    end
    assert.are.equal(runs[1]:find("SCRIPT"), runs[2]:find("tree.lua", 1, true))
    assert.are.equal(runs[1]:find("STATE"), runs[3]:find(" ok ", 1, true) + 1)
    local done_end = select(2, runs[1]:find("DONE"))
    assert.are.equal(done_end, select(2, runs[2]:find("1200", 1, true)))
    assert.are.equal(done_end, select(2, runs[3]:find("%s0%s")) - 1)
  end)

  it("shows what it cannot read of a malformed entry as '-', and carries on", function()
    server = redis.start()
    server:cli("ZADD", "lp:runs", 1, "not-a-run\1\27[31m")
    server:cli("HSET", "lp:workers", "odd", "justahost", "w", "h x 2 y 3")
    local res = status(server.url)
    assert.are.equal(0, res.code, H.describe(res))
    assert.falsy(res.out:find("\27", 1, true), "a terminal escape reached the output")
    local runs = table_lines(res.out, "RUN ")
    assert.are.same({ "not-a-run??[31m", "-", "-", "0", "0", "0", "0", "-" }, cells(runs[2]))
    local workers = table_lines(res.out, "WORKER ")
    assert.are.same({ "odd", "justahost", "-", "-", "-", "-" }, cells(workers[2]))
    assert.are.same({ "w", "h", "-", "2", "-", "3" }, cells(workers[3]))
  end)

  it("reads the db the URL names", function()
    server = redis.start()
    server:cli("-n", 3, "HSET", "lp:workers", "in-db-3", "h 1 1 0 0")
    local res = status(server.url .. "/3")
    assert.are.equal(0, res.code, H.describe(res))
    assert.truthy(res.out:find("in-db-3", 1, true), H.describe(res))
    assert.truthy(res.out:find("^broker redis://127.0.0.1:%d+/3\n"), H.describe(res))
    res = status(server.url)
    assert.truthy(res.out:find("no workers", 1, true), H.describe(res))
  end)

  it("refuses a bad URL with exit 2, saying what is wrong and the form", function()
    local cases = {
      { "localhost:6379", "does not start with redis://" },
      { "rediss://127.0.0.1:6380", "rediss:// (TLS) is not supported by hiredis 0.14" },
      { "redis://:6379", "the host is empty" },
      { "redis://127.0.0.1:0", "the port must be a number from 1 to 65535, got '0'" },
      { "redis://127.0.0.1:70000", "got '70000'" },
      { "redis://127.0.0.1:6379/x", "the db must be a number, got 'x'" },
      { "redis://127.0.0.1:6379/0?x=1", "unexpected '?x=1' at the end" },
      { "redis://u:hunter2@127.0.0.1:port", "got 'port'" },
    }
    for _, case in ipairs(cases) do
      local res = status(case[1])
      assert.are.equal(2, res.code, H.describe(res))
      assert.are.equal("", res.out)
      assert.truthy(H.contains(res.err, case[2]), H.describe(res))
      assert.truthy(H.contains(res.err, "redis://[user:password@]HOST:PORT[/DB]"), H.describe(res))
      assert.falsy(H.contains(res.err, "hunter2"), "the password was shown: " .. res.err)
      assert.are.equal(1, #H.split_lines(res.err), res.err)
    end
    local res = H.exec({ "status" })
    assert.are.equal(2, res.code, H.describe(res))
    assert.truthy(H.contains(res.err, "status needs --broker"), H.describe(res))
  end)

  it("says a broker that is down cannot be reached, exit 1", function()
    local port = redis.free_port()
    local res = status("redis://127.0.0.1:" .. port)
    assert.are.equal(1, res.code, H.describe(res))
    assert.are.equal("", res.out)
    assert.are.equal("luapool: cannot reach the broker at redis://127.0.0.1:" .. port ..
      ": Connection refused\n", res.err)
  end)

  describe("with AUTH", function()
    it("says a broker wants a password when the URL has none", function()
      server = redis.start { password = "s3cret" }
      local res = status("redis://127.0.0.1:" .. server.port)
      assert.are.equal(1, res.code, H.describe(res))
      assert.are.equal("luapool: the broker at redis://127.0.0.1:" .. server.port ..
        " wants a password (NOAUTH): give it in the URL, redis://[user:password@]HOST:PORT[/DB]\n",
        res.err)
    end)

    it("says AUTH was refused for a wrong password, without showing it", function()
      server = redis.start { password = "s3cret" }
      local res = status("redis://:wr0ng@127.0.0.1:" .. server.port)
      assert.are.equal(1, res.code, H.describe(res))
      assert.truthy(H.contains(res.err, "luapool: the broker at redis://127.0.0.1:" ..
        server.port .. " refused AUTH: WRONGPASS"), H.describe(res))
      assert.falsy(H.contains(res.err, "wr0ng"), res.err)
    end)

    it("works with the right password, for the default user and an ACL user", function()
      server = redis.start { user = "alice", password = "p@ss:w/rd" }
      server:cli("HSET", "lp:workers", "w", "h 1 1 0 0")
      -- The server's URL %-encodes the password.
      assert.are.equal("redis://alice:p%40ss%3Aw%2Frd@127.0.0.1:" .. server.port, server.url)
      local res = status(server.url)
      assert.are.equal(0, res.code, H.describe(res))
      assert.truthy(res.out:find("^broker redis://alice@127%.0%.0%.1:%d+\n"), H.describe(res))
      assert.truthy(H.contains(res.out, "\nw "), H.describe(res))
      assert.falsy(H.contains(res.out .. res.err, "p@ss"), H.describe(res))

      res = status("redis://:p%40ss%3Aw%2Frd@127.0.0.1:" .. server.port) -- the default user
      assert.are.equal(0, res.code, H.describe(res))

      res = status("redis://alice:nope@127.0.0.1:" .. server.port)
      assert.are.equal(1, res.code, H.describe(res))
      assert.truthy(H.contains(res.err, "the broker at redis://alice@127.0.0.1:" ..
        server.port .. " refused AUTH: WRONGPASS"), H.describe(res))
    end)

    it("works with a user made by ACL SETUSER on a running broker", function()
      server = redis.start { password = "adm1n" }
      server:cli("ACL", "SETUSER", "bob", "on", ">b0b", "~lp:*", "+@read", "+ping")
      server:cli("HSET", "lp:workers", "w", "h 1 1 0 0")
      local res = status("redis://bob:b0b@127.0.0.1:" .. server.port)
      assert.are.equal(0, res.code, H.describe(res))
      assert.truthy(H.contains(res.out, "\nw "), H.describe(res))
    end)
  end)
end)
