/*
 * counter.c - luapool.counter(name): a named integer shared by every task
 * of the run, and its storage in the engine.
 *
 * DESIGN. The engine's counters (eng->counters) are blocks of
 * LP_COUNTER_BLOCK atomic slots, indexed by the id of the counter's name in
 * eng->names; a slot never moves once made, so a counter's userdata keeps
 * a bare pointer to it and add/get touch only the atomic. The lock guards
 * the table of blocks, and is taken when a state first makes a counter of a
 * name and when a place asks for one (a worker process's tasks' counters
 * are names only: every use is a round trip to the engine, through the
 * engine's uplink, place.h). The storage is made on first use and freed at
 * close by lp_sync_free, after every worker has been joined.
 */
#include "counter.h"

#include <pthread.h>
#include <stdlib.h>

#include <lauxlib.h>

#include "engine.h"
#include "lib.h"

#define COUNTER_MT "luapool.counter"
#define LP_COUNTER_BLOCK 256

/* ---- the storage ---- */

struct lp_counters {
  pthread_mutex_t lock;     /* guards blocks and nblocks, not the slots */
  _Atomic int64_t **blocks; /* LP_COUNTER_BLOCK slots each; NULL where none yet */
  int nblocks;
};

/* Guards the creation of eng->counters; readers load the pointer with
 * acquire order. */
static pthread_mutex_t create_lock = PTHREAD_MUTEX_INITIALIZER;

static struct lp_counters *get_counters(luapool *eng) {
  struct lp_counters *c = __atomic_load_n(&eng->counters, __ATOMIC_ACQUIRE);
  if (c) return c;
  pthread_mutex_lock(&create_lock);
  c = __atomic_load_n(&eng->counters, __ATOMIC_ACQUIRE);
  if (!c && (c = calloc(1, sizeof *c)) != NULL) {
    pthread_mutex_init(&c->lock, NULL);
    __atomic_store_n(&eng->counters, c, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock(&create_lock);
  return c;
}

_Atomic int64_t *lp_counter_slot(luapool *eng, int id) {
  struct lp_counters *c = get_counters(eng);
  if (!c) return NULL;
  int b = id / LP_COUNTER_BLOCK;
  pthread_mutex_lock(&c->lock);
  if (b >= c->nblocks) {
    int nb = b + 1;
    _Atomic int64_t **blocks = realloc(c->blocks, sizeof *blocks * (size_t)nb);
    if (!blocks) {
      pthread_mutex_unlock(&c->lock);
      return NULL;
    }
    for (int i = c->nblocks; i < nb; i++) blocks[i] = NULL;
    c->blocks = blocks;
    c->nblocks = nb;
  }
  if (!c->blocks[b]) c->blocks[b] = calloc(LP_COUNTER_BLOCK, sizeof(_Atomic int64_t));
  _Atomic int64_t *slot = c->blocks[b] ? &c->blocks[b][id % LP_COUNTER_BLOCK] : NULL;
  pthread_mutex_unlock(&c->lock);
  return slot;
}

void lp_counter_free(luapool *eng) {
  struct lp_counters *c = eng->counters;
  if (!c) return;
  for (int i = 0; i < c->nblocks; i++) free(c->blocks[i]);
  free(c->blocks);
  pthread_mutex_destroy(&c->lock);
  free(c);
  eng->counters = NULL;
}

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
  _Atomic int64_t *slot = id >= 0 && !eng->up ? lp_counter_slot(eng, id) : NULL;
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
