/*
 * sync.c - the engine-wide registry of named objects behind
 * luapool.channel (channel.c), luapool.sequencer (sequencer.c) and
 * luapool.counter (counter.c: a slot each), and the
 * helpers both kinds use to wait. Kept apart from the two kinds so that
 * each file holds one concept; sync_int.h is what they share.
 *
 * DESIGN. Channels and sequencers are engine-wide objects found by name.
 * The registry (eng->sync) maps a name's id in eng->names to the object;
 * its mutex is taken only the first time a Lua state meets a name, because
 * each state keeps its own name -> userdata cache, and it is released
 * before an object's own spinlock is taken (no lock nests with it). Objects
 * live until lp_sync_free at engine close, which runs after every worker
 * has been joined, so a userdata holds a bare pointer and needs no __gc;
 * lp_sync_free frees the registry and has each kind free its objects, the
 * counters' slots (counter.c) with them, so the engine's close frees every
 * engine-wide object of the library with that one call.
 *
 * Waiting follows lib.h; channel.c and sequencer.c say what a waiter links
 * and who wakes it. In threaded runs a wait without a timeout still
 * registers a far-off timer, so a cancelled run, which fires every timer,
 * reaches tasks blocked in either kind.
 */
#include "sync.h"
#include "sync_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "engine.h"
#include "lib.h"
#include "pool.h"
#include "timer.h"

/* ---- the registry ---- */

struct lp_sync {
  pthread_mutex_t lock; /* guards the tables below, not the objects */
  void **chans;         /* lp_chan *, indexed by name id; NULL where none */
  size_t nchans;
  void **seqs; /* lp_seq *, the same way */
  size_t nseqs;
  void **counters; /* _Atomic int64_t *, the same way (counter.c) */
  size_t ncounters;
};

/* Guards the creation of eng->sync, which a late require "luapool" may
 * race for; readers load the pointer with acquire order. */
static pthread_mutex_t create_lock = PTHREAD_MUTEX_INITIALIZER;

static struct lp_sync *get_sync(luapool *eng) {
  struct lp_sync *s = __atomic_load_n(&eng->sync, __ATOMIC_ACQUIRE);
  if (s) return s;
  pthread_mutex_lock(&create_lock);
  s = __atomic_load_n(&eng->sync, __ATOMIC_ACQUIRE);
  if (!s && (s = calloc(1, sizeof *s)) != NULL) {
    pthread_mutex_init(&s->lock, NULL);
    __atomic_store_n(&eng->sync, s, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock(&create_lock);
  return s;
}

/* Makes slot `id` of a table of pointers exist; 0 or -1. Under s->lock. */
static int reserve(void ***tab, size_t *n, int id) {
  if ((size_t)id < *n) return 0;
  size_t nn = *n ? *n : 16;
  while (nn <= (size_t)id) nn *= 2;
  void **p = realloc(*tab, nn * sizeof *p);
  if (!p) return -1;
  memset(p + *n, 0, (nn - *n) * sizeof *p);
  *tab = p;
  *n = nn;
  return 0;
}

/* ---- helpers of a wait ---- */

/* Raises the error that ends a cancelled task: lp_lib_check_cancelled's
 * (a timeout's, say) or "task cancelled". Does not return; its int is
 * for `return lp_sync_raise_cancelled(...)`, as with luaL_error. */
int lp_sync_raise_cancelled(lua_State *L, lp_task *self) {
  lp_lib_check_cancelled(L, self);
  return luaL_error(L, "luapool: task cancelled");
}

/* Hands a task whose arm a waker took back to its owner. */
void lp_sync_hand_back(lp_task *t) {
  if (t) lp_sched_resume(&t->eng->sched, t->owner, t);
}

/* Registers the timer of a wait that starts now and returns its time: the
 * caller's deadline, or far away in threaded runs (see DESIGN). Called
 * before anything is linked, so failing leaves nothing behind; the same
 * entry is then moved, not allocated, by lp_lib_suspend. */
double lp_sync_add_timer(lua_State *L, lp_task *self, double deadline, int *oom) {
  lp_worker *w = lp_worker_of(L);
  if (deadline < 0 && !w->eng->inline_mode) deadline = lp_now() + LP_TIMER_FOREVER;
  *oom = deadline >= 0 && lp_timers_add(&w->timers, self, deadline) != 0;
  return deadline;
}

/* Whether the running task could wait here for `deadline`: it runs in its
 * own coroutine, can yield, and (in an inline run) has a deadline. */
int lp_sync_can_wait(lua_State *L, double deadline) {
  lp_worker *w = lp_worker_of(L);
  lp_task *self = w ? w->current : NULL;
  return self && L == self->co && lua_isyieldable(L) && (deadline >= 0 || !w->eng->inline_mode);
}

/* The running task if it can wait here; raises otherwise (for an inline
 * run: the deadlock error). Call with no lock held and nothing to free. */
lp_task *lp_sync_check_can_wait(lua_State *L, const char *what, double deadline) {
  lp_task *self = lp_lib_waiting(L, what);
  if (lp_worker_of(L)->eng->inline_mode && deadline < 0)
    lp_lib_suspend(L, self, -1, 0, NULL); /* raises the deadlock error */
  return self;
}

/* The object behind the userdata at 1, whose metatable the calling method
 * holds as upvalue 1: cheaper than luaL_checkudata's registry look-up. */
void *lp_sync_check_self(lua_State *L, const char *what, const char *kind) {
  void **p = lua_touserdata(L, 1);
  if (p && lua_getmetatable(L, 1)) {
    int ok = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (ok) return *p;
  }
  luaL_error(L, "%s: expected a %s (call it with ':')", what, kind);
  return NULL;
}

/* The optional integer argument at idx: 1 and *v set if given, 0 if nil;
 * raises if it is anything else. */
int lp_sync_opt_int(lua_State *L, int idx, const char *what, const char *param, lua_Integer *v) {
  if (lua_isnoneornil(L, idx)) return 0;
  int isint = 0;
  if (lua_type(L, idx) == LUA_TNUMBER) *v = lua_tointegerx(L, idx, &isint);
  if (!isint)
    luaL_error(L, "%s: %s must be an integer, not %s %s", what, param, luaL_typename(L, idx),
               luaL_tolstring(L, idx, NULL));
  return 1;
}

/* Pushes this state's userdata for the object named by the string at 1 and
 * returns the object. The constructor's upvalues are the state's cache
 * (name -> userdata) and the metatable; `kind` picks the registry's table,
 * and make() creates a missing object under the registry lock. */
void *lp_sync_lookup(lua_State *L, const char *what, lp_sync_kind kind, lp_sync_make_fn make,
                     lua_Integer arg, int given) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  lua_settop(L, 1);
  lua_pushvalue(L, 1);
  if (lua_rawget(L, lua_upvalueindex(1)) == LUA_TUSERDATA) return *(void **)lua_touserdata(L, -1);
  lua_pop(L, 1);
  luapool *eng = lp_worker_of(L)->eng;
  struct lp_sync *sy = get_sync(eng);
  int id = lp_names_intern(&eng->names, name, len);
  void *obj = NULL;
  if (sy && id >= 0) {
    int seqs = kind == LP_SYNC_SEQUENCER;
    void ***tab = seqs ? &sy->seqs : &sy->chans;
    pthread_mutex_lock(&sy->lock);
    if (reserve(tab, seqs ? &sy->nseqs : &sy->nchans, id) == 0 && !(obj = (*tab)[id]))
      obj = (*tab)[id] = make(lp_names_get(&eng->names, id), arg, given);
    pthread_mutex_unlock(&sy->lock);
  }
  if (!obj) luaL_error(L, "%s: out of memory", what);
  void **ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = obj;
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -2);
  lua_rawset(L, lua_upvalueindex(1));
  return obj;
}

/* ---- registration and clean-up ---- */

/* Makes the metatable `mt` and module[ctor_name]. The methods and
 * __tostring get the metatable as upvalue 1 (for lp_sync_check_self); the
 * constructor gets this state's cache and the metatable (lp_sync_lookup). */
void lp_sync_add_class(lua_State *L, int module, const char *mt, const luaL_Reg *methods,
                       lua_CFunction tostring, const char *ctor_name, lua_CFunction ctor) {
  luaL_newmetatable(L, mt);
  lua_newtable(L);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, methods, 1);
  lua_setfield(L, -2, "__index");
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, tostring, 1);
  lua_setfield(L, -2, "__tostring");
  lua_newtable(L); /* this state's cache: name -> userdata */
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, ctor, 2);
  lua_setfield(L, module, ctor_name);
  lua_pop(L, 1);
}

void lp_sync_register(lua_State *L) {
  int module = lua_absindex(L, -1);
  lp_channel_open(L, module);
  lp_sequencer_open(L, module);
}

_Atomic int64_t *lp_sync_counter(struct luapool *eng, int id) {
  struct lp_sync *s = get_sync(eng);
  if (!s || id < 0) return NULL;
  pthread_mutex_lock(&s->lock);
  _Atomic int64_t *slot = NULL;
  if (reserve(&s->counters, &s->ncounters, id) == 0) {
    if (!s->counters[id]) s->counters[id] = calloc(1, sizeof(_Atomic int64_t));
    slot = s->counters[id];
  }
  pthread_mutex_unlock(&s->lock);
  return slot;
}

void lp_sync_free(struct luapool *eng) {
  struct lp_sync *s = eng->sync;
  if (!s) return;
  for (size_t i = 0; i < s->nchans; i++) lp_channel_free(s->chans[i]);
  for (size_t i = 0; i < s->nseqs; i++) lp_sequencer_free(s->seqs[i]);
  for (size_t i = 0; i < s->ncounters; i++) free(s->counters[i]);
  free(s->chans);
  free(s->seqs);
  free(s->counters);
  pthread_mutex_destroy(&s->lock);
  free(s);
  eng->sync = NULL;
}
