local x = 1
error("top level fails")
function main() end
