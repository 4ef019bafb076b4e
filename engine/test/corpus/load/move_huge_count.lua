local ok, e = pcall(table.move, {}, 1, 1 << 40, 2)
assert(not ok)
assert(pcall(table.move, {1,2,3}, 1, 3, 2))
function main() end
