for i = 1, 300 do _G["f" .. i] = function() return i end end
for i = 1, 30 do local t = {}; _G["t" .. i] = t; for j = 1, 30 do t["g" .. j] = function() end end end
function main() end
