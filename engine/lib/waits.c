/*
 * waits.c - the waits that are not for one future: luapool.join (for every
 * child), sleep and yield, and the watcher behind as_completed and
 * imap_unordered, which reports futures in the order they finish.
 *
 * Each follows lib.h: check, arm, register the waker, suspend; the
 * continuation checks again. A watcher links one waiter (a watch_node) to
 * each of its tasks; a finishing task's worker fires it, which appends the
 * index to the ring under the watcher's spinlock and wakes the task inside
 * next(), if any. The watcher is freed when its userdata is collected and
 * every linked node has fired or been unlinked (refs).
 */
#include <stdlib.h>

#include <lauxlib.h>

#include "engine.h"
#include "lib.h"
#include "pool.h"
#include "spin.h"
#include "timer.h"

#define WATCH_MT "luapool.watch"

/* luapool.join([timeout]): the deadline is at stack index 2. */
static int join_after_k(lua_State *L, int status, lua_KContext ctx);

static int join_k(lua_State *L, int status, lua_KContext ctx) {
  lp_task *self = lp_worker_of(L)->current;
  if (status == LUA_YIELD) lp_lib_resumed(L, self);
  for (;;) {
    if (lp_task_pending(self) == 1) break;
    lp_lib_check_cancelled(L, self);
    double deadline = lua_tonumber(L, 2);
    if (deadline >= 0 && lp_now() >= deadline) {
      lua_pushboolean(L, 0);
      return 1;
    }
    lp_task_arm(self);
    if (!lp_task_join_begin(self)) {
      /* Wait for the wake; if the deadline comes first, give the flag back
       * (or, if a child took it, its wake is already on the way). */
      return lp_lib_suspend(L, self, deadline, ctx, join_after_k);
    }
    if (!lp_task_disarm(self)) { /* a wake is on its way: take it */
      lp_worker_of(L)->yield_kind = LP_YIELD_WAIT;
      return lua_yieldk(L, 0, ctx, join_k);
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Resumed from a join wait: by the child that took the flag, by the
 * deadline, or by a cancel. */
static int join_after_k(lua_State *L, int status, lua_KContext ctx) {
  lp_task *self = lp_worker_of(L)->current;
  (void)status;
  lp_lib_resumed(L, self);
  /* Give the flag back if no child took it. If one did, it found us
   * already disarmed (whoever resumed us disarmed first), so no second
   * hand-back is on its way. Then look again. */
  lp_task_join_end(self);
  return join_k(L, LUA_OK, ctx);
}

static int l_join(lua_State *L) {
  lp_task *self = lp_lib_running(L, "luapool.join");
  double deadline = lp_lib_deadline(L, 1);
  lua_settop(L, 1);
  lua_pushnumber(L, deadline);
  if (lp_task_pending(self) == 1) return lua_pushboolean(L, 1), 1;
  lp_lib_waiting(L, "luapool.join");
  return join_k(L, LUA_OK, 0);
}

/* ---- sleep, yield ---- */

static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  lp_task *self = lp_worker_of(L)->current;
  if (status == LUA_YIELD) lp_lib_resumed(L, self);
  lp_lib_check_cancelled(L, self);
  double deadline = lua_tonumber(L, 2);
  if (lp_now() >= deadline) return 0;
  lp_task_arm(self);
  return lp_lib_suspend(L, self, deadline, ctx, sleep_k);
}

static int l_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  if (s != s) return luaL_argerror(L, 1, "NaN");
  lp_worker *w = lp_worker_of(L);
  lp_lib_waiting(L, "luapool.sleep");
  if (w->eng->inline_mode) {
    lp_sleep(s); /* nothing else could run meanwhile on this thread */
    return 0;
  }
  lua_settop(L, 1);
  lua_pushnumber(L, lp_now() + (s > 0 ? s : 0));
  if (s <= 0) return lp_pool_yield_current(w), lua_yieldk(L, 0, 0, sleep_k);
  return sleep_k(L, LUA_OK, 0);
}

static int yield_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status, (void)ctx;
  lp_lib_check_cancelled(L, lp_worker_of(L)->current);
  return 0;
}

static int l_yield(lua_State *L) {
  lp_worker *w = lp_worker_of(L);
  lp_lib_waiting(L, "luapool.yield");
  if (w->eng->inline_mode) return 0;
  lp_pool_yield_current(w);
  return lua_yieldk(L, 0, 0, yield_k);
}

/* ---- watchers: futures in completion order (as_completed) ---- */

typedef struct watch_node {
  lp_waiter w;
  struct lp_watch *watch;
  lp_task *t;
  int index;
  int linked;
} watch_node;

typedef struct lp_watch {
  _Atomic int lock;
  _Atomic int refs; /* the userdata + one per linked node */
  int n;
  int head, tail; /* ring of finished indices, in finishing order */
  int *ready;
  lp_task *waiter; /* the task inside next(), or NULL */
  watch_node *nodes;
} lp_watch;

static void watch_unref(lp_watch *wa) {
  if (atomic_fetch_sub(&wa->refs, 1) != 1) return;
  for (int i = 0; i < wa->n; i++) lp_task_unref(wa->nodes[i].t);
  free(wa->ready);
  free(wa->nodes);
  free(wa);
}

static void watch_fire(lp_waiter *w, lp_task *done) {
  (void)done;
  watch_node *node = (watch_node *)w;
  lp_watch *wa = node->watch;
  lp_spin_lock(&wa->lock);
  wa->ready[wa->tail++] = node->index;
  lp_task *waiter = wa->waiter;
  lp_spin_unlock(&wa->lock);
  if (waiter) lp_task_wake(waiter);
  watch_unref(wa);
}

static int l_watch(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)lua_rawlen(L, 1);
  lp_watch **ud = lua_newuserdatauv(L, sizeof *ud, 1);
  *ud = NULL;
  luaL_setmetatable(L, WATCH_MT);
  lp_watch *wa = calloc(1, sizeof *wa);
  if (!wa || !(wa->ready = malloc(sizeof(int) * ((size_t)n + 1))) ||
      !(wa->nodes = calloc((size_t)n + 1, sizeof(watch_node)))) {
    if (wa) free(wa->ready);
    free(wa);
    return luaL_error(L, "luapool: out of memory");
  }
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    lp_future *f = lp_future_test(L, -1);
    lua_pop(L, 1);
    if (!f) {
      for (int j = 0; j < i; j++) lp_task_unref(wa->nodes[j].t);
      free(wa->ready);
      free(wa->nodes);
      free(wa);
      return lp_lib_error(L, "luapool.as_completed: argument 1: item %d is not a future", i + 1);
    }
    wa->nodes[i].t = f->t;
    lp_task_ref(f->t);
  }
  wa->n = n;
  atomic_init(&wa->refs, 1);
  *ud = wa;
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1); /* keeps the futures alive */
  for (int i = 0; i < n; i++) {
    watch_node *node = &wa->nodes[i];
    node->w.fire = watch_fire;
    node->watch = wa;
    node->index = i + 1;
    atomic_fetch_add(&wa->refs, 1);
    if (lp_task_watch(node->t, &node->w) != 0) {
      atomic_fetch_sub(&wa->refs, 1);
      lp_spin_lock(&wa->lock);
      wa->ready[wa->tail++] = i + 1;
      lp_spin_unlock(&wa->lock);
    }
  }
  return 1;
}

static lp_watch *check_watch(lua_State *L) {
  lp_watch *wa = *(lp_watch **)luaL_checkudata(L, 1, WATCH_MT);
  if (!wa) luaL_argerror(L, 1, "closed watcher");
  return wa;
}

/* watcher:next([timeout]) -> index of the next finished future, in finishing
 * order; nil when all were returned; false on timeout. */
static int watch_next_k(lua_State *L, int status, lua_KContext ctx) {
  lp_watch *wa = check_watch(L);
  lp_task *self = lp_worker_of(L)->current;
  if (status == LUA_YIELD) lp_lib_resumed(L, self);
  for (;;) {
    lp_spin_lock(&wa->lock);
    wa->waiter = NULL;
    int got = wa->head < wa->tail ? wa->ready[wa->head++] : 0;
    int all = wa->head >= wa->n;
    if (!got && !all) {
      lp_task_arm(self);
      wa->waiter = self;
    }
    lp_spin_unlock(&wa->lock);
    if (got) return lua_pushinteger(L, got), 1;
    if (all) return lua_pushnil(L), 1;
    lp_lib_check_cancelled(L, self);
    double deadline = lua_tonumber(L, 3);
    if (deadline >= 0 && lp_now() >= deadline) {
      lp_spin_lock(&wa->lock);
      wa->waiter = NULL;
      lp_spin_unlock(&wa->lock);
      if (lp_task_disarm(self)) return lua_pushboolean(L, 0), 1;
      lp_worker_of(L)->yield_kind = LP_YIELD_WAIT; /* a wake is on its way */
      return lua_yieldk(L, 0, ctx, watch_next_k);
    }
    return lp_lib_suspend(L, self, deadline, ctx, watch_next_k);
  }
}

static int watch_next(lua_State *L) {
  lp_watch *wa = check_watch(L);
  double deadline = lp_lib_deadline(L, 2);
  lua_settop(L, 2);
  lua_pushnumber(L, deadline);
  lp_spin_lock(&wa->lock);
  int got = wa->head < wa->tail ? wa->ready[wa->head++] : 0;
  int all = wa->head >= wa->n;
  lp_spin_unlock(&wa->lock);
  if (got) return lua_pushinteger(L, got), 1;
  if (all) return lua_pushnil(L), 1;
  lp_lib_waiting(L, "luapool.as_completed");
  return watch_next_k(L, LUA_OK, 0);
}

static int watch_gc(lua_State *L) {
  lp_watch **ud = luaL_checkudata(L, 1, WATCH_MT);
  lp_watch *wa = *ud;
  if (!wa) return 0;
  *ud = NULL;
  for (int i = 0; i < wa->n; i++) {
    /* Unlinked by us (not by a finish): its reference is ours to drop. If
     * a finish unlinked it first, its fire() drops it. */
    if (lp_task_unwatch(wa->nodes[i].t, &wa->nodes[i].w)) watch_unref(wa);
  }
  watch_unref(wa);
  return 0;
}

void lp_waits_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"next", watch_next}, {NULL, NULL}};
  luaL_newmetatable(L, WATCH_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, watch_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}

void lp_waits_register(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"join", l_join}, {"sleep", l_sleep}, {"yield", l_yield}, {"_watch", l_watch}, {NULL, NULL}};
  luaL_setfuncs(L, funcs, 0);
}
