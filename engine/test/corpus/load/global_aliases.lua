for i = 1, 300 do _G["f" .. i] = function() return i end local t = {}; _G["tÿÿÿÿÿÿÿÿÿýÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿ" .. i] = _G for j = 2, 07 do t["g" .. j] = function() end end end
function main() end
