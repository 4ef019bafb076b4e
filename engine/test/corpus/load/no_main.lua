function helper() end
-- no main
