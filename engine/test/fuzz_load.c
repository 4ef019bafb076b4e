/*
 * fuzz_load.c - libFuzzer harness for script loading: any bytes given to
 * luapool_load_string (what `luapool run` and `luapool check` do with a
 * script file) must end in a loaded engine or in LUAPOOL_ESCRIPT with a
 * message, never in a crash, a leak or a hang of the engine.
 *
 * A loaded script's top level really runs, in a worker state of an engine
 * opened with --workers 0. So that the fuzzer explores luapool and not the
 * machine, this file provides the luaL_openlibs that worker states call: the
 * standard libraries without what reaches outside the process (io, os
 * except its clocks, package loaders other than preload, dofile, loadfile,
 * debug.sethook), an instruction budget that turns a script's own
 * endless loop into a Lua error, and a string.rep and a table.move that
 * refuse a count whose C loop alone would outlast the budget
 * (string.rep("", 1 << 40) runs 2^40 empty copies, which no hook sees). The memory limit of the
 * engine bounds its allocations. Built by cmake -DLUAPOOL_FUZZ=ON (clang); without it the same file
 * runs the seed corpus once (fuzz_main.c) as a regression test: build-fuzz/fuzz_load
 * -max_total_time=600 CORPUS engine/test/corpus/load
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "luapool.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define BUDGET_STEPS 1000 /* instructions between two hook calls */
#define BUDGET_CALLS 2000 /* hook calls before a state's top level is stopped */
#define BUDGET_KEY "fuzz_load.budget"

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_getfield(L, LUA_REGISTRYINDEX, BUDGET_KEY);
  lua_Integer left = lua_tointeger(L, -1) - 1;
  lua_pop(L, 1);
  lua_pushinteger(L, left);
  lua_setfield(L, LUA_REGISTRYINDEX, BUDGET_KEY);
  /* Raises again at every later hook, so a pcall cannot absorb it. */
  if (left < 0) luaL_error(L, "fuzz_load: instruction budget exhausted");
}

#define REP_STEPS 16000000 /* bytes and repeats string.rep may make in one call */

static int bounded_rep(lua_State *L) {
  size_t len, seplen = 0;
  luaL_checklstring(L, 1, &len);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_optlstring(L, 3, "", &seplen);
  if (n > 0 && (double)n * (double)(len + seplen + 1) > REP_STEPS)
    return luaL_error(L, "fuzz_load: string.rep of %I repeats refused", n);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

static int bounded_move(lua_State *L) {
  lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
  if (e >= f && (double)e - (double)f > REP_STEPS)
    return luaL_error(L, "fuzz_load: table.move of %f elements refused", (double)e - (double)f);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* Replaces lib.name by f with the original as its upvalue. */
static void bound(lua_State *L, const char *lib, const char *name, lua_CFunction f) {
  lua_getglobal(L, lib);
  lua_getfield(L, -1, name);
  lua_pushcclosure(L, f, 1);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

static const luaL_Reg libs[] = {
    {LUA_GNAME, luaopen_base},          {LUA_LOADLIBNAME, luaopen_package},
    {LUA_COLIBNAME, luaopen_coroutine}, {LUA_TABLIBNAME, luaopen_table},
    {LUA_OSLIBNAME, luaopen_os},        {LUA_STRLIBNAME, luaopen_string},
    {LUA_MATHLIBNAME, luaopen_math},    {LUA_UTF8LIBNAME, luaopen_utf8},
    {LUA_DBLIBNAME, luaopen_debug},     {NULL, NULL}};

static void drop(lua_State *L, const char *table, const char *field) {
  if (table) {
    lua_getglobal(L, table);
    lua_pushnil(L);
    lua_setfield(L, -2, field);
    lua_pop(L, 1);
  } else {
    lua_pushnil(L);
    lua_setglobal(L, field);
  }
}

void luaL_openlibs(lua_State *L) {
  for (const luaL_Reg *lib = libs; lib->func; lib++) {
    luaL_requiref(L, lib->name, lib->func, 1);
    lua_pop(L, 1);
  }
  static const char *const os_out[] = {"execute", "exit",    "getenv",    "remove",
                                       "rename",  "tmpname", "setlocale", NULL};
  for (int i = 0; os_out[i]; i++) drop(L, "os", os_out[i]);
  bound(L, "string", "rep", bounded_rep);
  bound(L, "table", "move", bounded_move);
  drop(L, NULL, "dofile");
  drop(L, NULL, "loadfile");
  drop(L, "debug", "sethook");
  drop(L, "debug", "debug");
  drop(L, "package", "loadlib");
  /* Only the preload searcher: `require "luapool"` works, files are not read. */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchers");
  for (lua_Integer i = luaL_len(L, -1); i > 1; i--) {
    lua_pushnil(L);
    lua_rawseti(L, -2, i);
  }
  lua_pop(L, 2);
  lua_pushinteger(L, BUDGET_CALLS);
  lua_setfield(L, LUA_REGISTRYINDEX, BUDGET_KEY);
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, BUDGET_STEPS);
}

static void fail(const char *what, const char *detail) {
  fprintf(stderr, "fuzz_load: %s: %s\n", what, detail ? detail : "");
  abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  luapool_config cfg;
  luapool_config_init(&cfg);
  cfg.workers = 0;
  cfg.memory_limit = (size_t)64 << 20;
  luapool *lp;
  if (luapool_open(&cfg, &lp) != 0) fail("open", NULL);
  /* The first byte picks the chunk name's form, as the CLI and hosts give it. */
  const char *name = size > 0 && (data[0] & 1) ? "@fuzz.lua" : "=fuzz";
  int rc = luapool_load_string(lp, (const char *)data, size, name);
  const char *msg = luapool_errmsg(lp);
  if (rc == 0) {
    if (size > 0 && data[0] == 0x1b) fail("a precompiled chunk was accepted", NULL);
    const char *const *names;
    int n = luapool_functions(lp, &names);
    if (n < 0) fail("functions", luapool_strerror(n));
    for (int i = 0; i < n; i++) {
      if (!names[i] || (i > 0 && strcmp(names[i - 1], names[i]) > 0))
        fail("function names not sorted", names[i]);
      if (!luapool_has_function(lp, names[i])) fail("listed function not found", names[i]);
    }
    if (luapool_load_string(lp, "", 0, NULL) != LUAPOOL_ESTATE) fail("second load accepted", NULL);
  } else if (rc != LUAPOOL_ESCRIPT && rc != LUAPOOL_ENOMEM) {
    fail("unexpected error code", luapool_strerror(rc));
  } else if (!msg || !*msg) {
    fail("an error without a message", luapool_strerror(rc));
  }
  luapool_close(lp);
  return 0;
}
