util = { parse = function(s) return s end, deep = { er = { est = function() end } } }
util["with.dot"] = function() end
util[""] = function() end
_G["a\0b"] = function() end
t = setmetatable({}, { __index = function() error("no") end })
t.f = function() end
cycle = {}; cycle.self = cycle; cycle.f = function() end
lib = string
string.mine = function() end
function main() end
