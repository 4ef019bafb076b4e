#!/usr/bin/env luapool
function main() print("shebang") end
