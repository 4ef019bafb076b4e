local a <const> = 1
local b <close> = nil
goto done
::done::
function main() end
