#!lua name=luapool
--[[
functions.lua - the Redis functions a run's workers commit through. Each
runs atomically inside Redis: what a task produced (its outcome and the
records of its subtree) is written together with its acknowledgement, or
not at all.

Fencing. A task is an entry of the run's stream `q`, read by a worker
through the consumer group `w`. Redis counts its deliveries: a worker's
attempt holds the entry's id, its own name and the delivery count it was
given (the fence). Another worker claims a task whose holder has been
silent past the lease (lp_claim: XAUTOCLAIM counts one more delivery), so
the old attempt's fence no longer matches and lp_commit refuses it: a
frozen worker that comes back cannot commit over the new attempt.
]]

-- Whether `name` still holds entry `id` of stream `q` with delivery count
-- `fence`.
local function holds(q, group, name, id, fence)
  local p = redis.call('XPENDING', q, group, id, id, 1)
  local e = p[1]
  return e ~= nil and e[2] == name and tostring(e[4]) == fence
end

-- KEYS: q, res, n, then per task its owner's inbox.
-- ARGV: group, name, then per task: id, fence, key, outcome, failed (0/1).
-- (n and failed are the run's counts, kept by the workers as they go.)
-- Returns per task 1 (committed), 0 (stale: the lease was lost) or 2 (the
-- key was committed before: an earlier attempt's outcome stands).
local function commit(keys, args)
  local q, res = keys[1], keys[2]
  local group, name = args[1], args[2]
  local out = {}
  local t = 0
  for i = 3, #args, 5 do
    t = t + 1
    local id, fence, key, outcome = args[i], args[i + 1], args[i + 2], args[i + 3]
    if not holds(q, group, name, id, fence) then
      out[t] = 0
    else
      redis.call('XACK', q, group, id)
      redis.call('XDEL', q, id)
      if redis.call('HSETNX', res, key, outcome) == 0 then
        out[t] = 2
      else
        redis.call('XADD', keys[3 + t], '*', 'k', key, 'r', outcome)
        out[t] = 1
      end
    end
  end
  return out
end

-- KEYS: q, n. ARGV: group, name, then id, fence pairs: the tasks `name`
-- runs. Keeps each one's lease (resets its idle time without counting a
-- delivery) if `name` still holds it; returns the ids it no longer holds.
local function renew(keys, args)
  local q, group, name = keys[1], args[1], args[2]
  local lost = {}
  for i = 3, #args, 2 do
    if holds(q, group, name, args[i], args[i + 1]) then
      redis.call('XCLAIM', q, group, name, 0, args[i], 'JUSTID')
    else
      lost[#lost + 1] = args[i]
    end
  end
  return lost
end

-- KEYS: q. ARGV: group, name, lease (ms), count. Claims up to `count`
-- tasks whose holders have been silent for `lease`: per task its id, its
-- new fence and its fields.
local function claim(keys, args)
  local q, group, name = keys[1], args[1], args[2]
  local r = redis.call('XAUTOCLAIM', q, group, name, args[3], '0-0', 'COUNT', args[4])
  local out = {}
  for _, e in ipairs(r[2]) do
    if e[2] then
      local p = redis.call('XPENDING', q, group, e[1], e[1], 1)
      out[#out + 1] = {e[1], tostring(p[1][4]), e[2]}
    end
  end
  -- Entries deleted while pending: nothing to run.
  for _, id in ipairs(r[3] or {}) do redis.call('XACK', q, group, id) end
  return out
end

-- KEYS: q. ARGV: group, name, then id, fence pairs: tasks `name` took but
-- did not begin (it is stopping): each goes back as a new entry that any
-- worker reads at once.
local function giveback(keys, args)
  local q, group, name = keys[1], args[1], args[2]
  local back = 0
  for i = 3, #args, 2 do
    local id = args[i]
    if holds(q, group, name, id, args[i + 1]) then
      local e = redis.call('XRANGE', q, id, id)[1]
      redis.call('XACK', q, group, id)
      redis.call('XDEL', q, id)
      if e then
        redis.call('XADD', q, '*', unpack(e[2]))
        back = back + 1
      end
    end
  end
  return back
end

redis.register_function('lp_version', function() return 1 end)
redis.register_function('lp_commit', commit)
redis.register_function('lp_renew', renew)
redis.register_function('lp_claim', claim)
redis.register_function('lp_giveback', giveback)
