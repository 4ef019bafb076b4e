#!lua name=luapool
-- functions.lua - luapool's function library in the broker, loaded by every
-- connection that runs tasks (FUNCTION LOAD REPLACE): the steps of a run that
-- must be atomic in Redis. lp_version says which library a broker holds.
redis.register_function('lp_version', function() return 1 end)
