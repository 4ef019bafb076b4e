/*
 * counter.c - luapool.counter(name): a named integer shared by every task
 * of the run.
 *
 * DESIGN. A counter is an atomic slot in the engine's registry of named
 * objects (sync.c, lp_sync_counter), made on first use and never moved, so
 * a counter's userdata keeps a bare pointer to it and add/get touch only
 * the atomic. In an engine with an uplink (a worker process) a counter is
 * only a name: every use is a round trip to the engine upstream (place.h),
 * which answers from its own slot.
 */
#include <stdlib.h>

#include <lauxlib.h>

#include "engine.h"
#include "lib.h"
#include "sync.h"

#define COUNTER_MT "luapool.counter"
/* ---- the Lua face ---- */

/* A counter is a slot of the engine's; in an engine with an uplink (a
 * worker process) it is only a name, and every use asks upstream (the task
 * waits for the answer). */
typedef struct counter_ud {
  _Atomic int64_t *slot; /* NULL in an engine with an uplink */
  int name;
} counter_ud;

static int l_counter(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  luapool *eng = lp_worker_of(L)->eng;
  int id = lp_names_intern(&eng->names, name, len);
  _Atomic int64_t *slot = id >= 0 && !eng->up ? lp_sync_counter(eng, id) : NULL;
  if (id < 0 || (!slot && !eng->up)) return luaL_error(L, "luapool.counter: out of memory");
  counter_ud *c = lua_newuserdatauv(L, sizeof *c, 0);
  c->slot = slot;
  c->name = id;
  luaL_setmetatable(L, COUNTER_MT);
  return 1;
}

static int counter_add(lua_State *L) {
  counter_ud *c = luaL_checkudata(L, 1, COUNTER_MT);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  if (!c->slot) {
    lp_uplink *up = lp_worker_of(L)->eng->up;
    return up->ops->counter(up, L, c->name, (int64_t)n, 1);
  }
  lua_pushinteger(L, (lua_Integer)(atomic_fetch_add(c->slot, (int64_t)n) + (int64_t)n));
  return 1;
}

static int counter_get(lua_State *L) {
  counter_ud *c = luaL_checkudata(L, 1, COUNTER_MT);
  if (!c->slot) {
    lp_uplink *up = lp_worker_of(L)->eng->up;
    return up->ops->counter(up, L, c->name, 0, 0);
  }
  lua_pushinteger(L, (lua_Integer)atomic_load(c->slot));
  return 1;
}

void lp_counter_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"add", counter_add}, {"get", counter_get}, {NULL, NULL}};
  luaL_newmetatable(L, COUNTER_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

void lp_counter_register(lua_State *L) {
  lua_pushcfunction(L, l_counter);
  lua_setfield(L, -2, "counter");
}
