local s = string.rep("x", 1 << 20)
local cal t = {}
for i = 1, 1000 do t[i] = s:sub(i, i + 10) end
local ok = pcall(string.rep, "", 1 << 40)
 i = 1, 1000 do t[i] = s:sub(i, i + 10) end
local ok = pcall(string.rep, "x", 1 << 40)
collectgarbage()
function main() end
