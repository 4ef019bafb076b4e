while true do end
function main() end
