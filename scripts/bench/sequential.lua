-- The plain-Lua baselines, run by lua5.4 itself in one state.
local what, a, b = ...
local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
local function skynet(num, size)
  if size == 1 then return num end
  local sum, sub = 0, size // 10
  for i = 0, 9 do sum = sum + skynet(num + i * sub, sub) end
  return sum
end
local t0 = os.clock()
local r
if what == "fib" then r = fib(tonumber(a))
elseif what == "skynet" then r = skynet(0, tonumber(a))
elseif what == "fibs" then
  r = 0
  for _ = 1, tonumber(a) do r = r + fib(tonumber(b)) end
end
io.write(string.format("%.6f %s\n", os.clock() - t0, tostring(r)))
