/*
 * pool.c - worker threads and the running of tasks as Lua coroutines.
 *
 * DESIGN. Each worker thread owns one lua_State and runs tasks in
 * coroutines taken from a per-worker pool (a reused coroutine costs ~22 ns
 * to run, a fresh one ~180). A task's coroutine never leaves its worker:
 * when the task waits it yields, the worker goes on with other tasks, and
 * whoever ends the wait hands the task back to this worker's inbox
 * (sched.c). Only the owner touches its state, its coroutine pool, its
 * timers and its `current` task, so none of them is locked. The worker
 * holds no lock while Lua runs.
 *
 * A task's body runs inside task_entry, a C function that is itself the
 * coroutine's body: unpacking the arguments, the call and packing the
 * results all happen under lua_resume's protection, so a memory error or a
 * bad value fails the task rather than the engine. The text of a failure
 * (message, traceback, argument summary) is made by fail.c.
 *
 * Shut-down: lp_pool_stop sets the scheduler's stop flag after the engine
 * has let every task finish (or cancelled them); each worker leaves its
 * loop once it has no task alive, and is joined; then the states close.
 */
#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "engine.h"
#include "fail.h"
#include "spill.h"
#include "spin.h"
#include "vm.h"

#define SPIN_ROUNDS 2000 /* ~50 us of looking for work before parking */

/* ---- the coroutine pool ---- */

static int co_grow(lp_worker *w) {
  int cap = w->cap ? w->cap * 2 : 64;
  lua_State **p = realloc(w->cos_ptr, sizeof *p * (size_t)cap);
  if (!p) return -1;
  w->cos_ptr = p;
  int *f = realloc(w->cos_free, sizeof *f * (size_t)cap);
  if (!f) return -1;
  w->cos_free = f;
  int *e = realloc(w->cos_empty, sizeof *e * (size_t)cap);
  if (!e) return -1;
  w->cos_empty = e;
  lp_task **ts = realloc(w->cos_task, sizeof *ts * (size_t)cap);
  if (!ts) return -1;
  w->cos_task = ts;
  w->cap = cap;
  return 0;
}

/* A slot holding an idle coroutine, or -1. Creating a coroutine allocates
 * in Lua, so this runs where a memory error is caught (see run()). */
static int co_get(lp_worker *w) {
  if (w->nfree > 0) return w->cos_free[--w->nfree];
  if (w->nempty == 0 && w->ncos == w->cap && co_grow(w) != 0) return -1;
  int slot = w->nempty > 0 ? w->cos_empty[--w->nempty] : w->ncos++;
  lua_rawgeti(w->L, LUA_REGISTRYINDEX, w->cos_ref);
  w->cos_ptr[slot] = lua_newthread(w->L);
  lua_rawseti(w->L, -2, slot + 1);
  lua_pop(w->L, 1);
  return slot;
}

#define CO_KEEP 1024 /* idle coroutines kept for reuse */

/* A coroutine that ended in an error is not reused: if the error came out
 * of a hook, Lua leaves hooks disabled in it for good. */
static void co_put(lp_worker *w, int slot, int clean) {
  lua_State *co = w->cos_ptr[slot];
  w->cos_task[slot] = NULL;
  if (clean) lua_settop(co, 0);
  if (clean && w->nfree < CO_KEEP) {
    w->cos_free[w->nfree++] = slot;
    return;
  }
  lua_rawgeti(w->L, LUA_REGISTRYINDEX, w->cos_ref);
  lua_pushnil(w->L);
  lua_rawseti(w->L, -2, slot + 1);
  lua_pop(w->L, 1);
  w->cos_ptr[slot] = NULL;
  w->cos_empty[w->nempty++] = slot;
}

/* ---- a task's body ---- */

static int entry_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status, (void)ctx;
  lp_worker *w = lp_worker_of(L);
  int n = lua_gettop(L);
  char err[320];
  lp_pack_ctx pc = lp_vm_pack_ctx(L, 1);
  lp_buf_reset(&w->result);
  if (lp_pack_values(L, 1, n, &w->result, &pc, err, sizeof err) != 0) {
    const char *e = strncmp(err, "argument", 8) == 0 ? err + 8 : err;
    return luaL_error(L, "return value%s", e);
  }
  return 0;
}

/* The coroutine's body: the task's function and arguments come from the
 * task record, the results go to w->result. */
int lp_pool_task_entry(lua_State *L) {
  lp_worker *w = lp_worker_of(L);
  lp_task *t = w->current;
  lua_settop(L, 0);
  if (lp_vm_push_fn(L, t->fn) != 0)
    return luaL_error(L, "no task function named '%s' in the script",
                      lp_names_get(&w->eng->names, t->fn));
  char err[320];
  int n = 0;
  lp_pack_ctx pc = lp_vm_pack_ctx(L, 1);
  if (lp_unpack_values(L, t->args.data, t->args.len, &pc, &n, err, sizeof err) != 0)
    return luaL_error(L, "cannot read the task's arguments: %s", err);
  lua_callk(L, n, LUA_MULTRET, 0, entry_k);
  return entry_k(L, LUA_OK, 0);
}

/* ---- time limits ---- */

/* The count hook of a coroutine running a task with a time limit. Once the
 * limit has passed it raises on every instruction, so a pcall inside the
 * task cannot swallow the error: the task ends. */
static void limit_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lp_worker *w = lp_worker_of(L);
  lp_task *t = w->current;
  if (!t) return;
  if (atomic_load_explicit(&w->eng->stopping, memory_order_relaxed)) {
    lua_sethook(L, limit_hook, LUA_MASKCOUNT, 1); /* as for a timeout: pcall cannot keep it */
    luaL_error(L, "luapool: task cancelled");
  }
  lp_task *base = t->co_base ? t->co_base : t;
  lp_task *late = t->deadline > 0 && lp_now() >= t->deadline         ? t
                  : base->deadline > 0 && lp_now() >= base->deadline ? base
                                                                     : NULL;
  if (late) lp_pool_timed_out(L, late);
}

int lp_pool_timed_out(lua_State *L, lp_task *t) {
  lua_sethook(L, limit_hook, LUA_MASKCOUNT, 1);
  char msg[64];
  snprintf(msg, sizeof msg, "timed out after %g s", t->timeout);
  return luaL_error(L, "%s", msg);
}

/* Gives the task its time limit: a deadline, and the hook on its coroutine. */
static void start_limit(lp_worker *w, lp_task *t, lua_State *co) {
  t->deadline = lp_now() + t->timeout;
  lua_sethook(co, limit_hook, LUA_MASKCOUNT, 1000);
  (void)w;
}

/* A failed task with runs left runs again (lp_task_retry), as new, once
 * everything its failed attempt spawned has ended. Meanwhile it waits like
 * a joining task; the last child's end wakes it into its owner's inbox,
 * where run() starts it afresh (lp_task_retry_begin). */
static int retry(lp_worker *w, lp_task *t) {
  if (!lp_task_retry(t)) return 0;
  lp_stats_inc(&w->stats.retried);
  t->deadline = 0;
  atomic_store_explicit(&t->state, LP_TASK_QUEUED, memory_order_relaxed);
  lp_task_arm(t);
  if (!lp_task_join_begin(t)) return 1; /* the wake is the last child's */
  lp_task_disarm(t);
  if (lp_sched_push(&w->eng->sched, w->index, t) < 0) {
    t->retry_pending = 0;
    return 0;
  }
  return 1;
}

/* ---- running ---- */

static void run(lp_worker *w, lp_task *t) {
  luapool *eng = w->eng;
  lua_State *co = t->co;
  if (!co) { /* a new task */
    if (t->retry_pending) lp_task_retry_begin(t);
    uint64_t epoch = atomic_load_explicit(&eng->cancel_epoch, memory_order_relaxed);
    if (epoch != 0 && lp_task_cancelled(t)) {
      lp_fail_cancel(w, t);
      return;
    }
    int slot = co_get(w);
    if (slot < 0) {
      lp_fail_task(w, t, NULL);
      return;
    }
    co = w->cos_ptr[slot];
    if (lua_gethook(co)) lua_sethook(co, NULL, 0, 0);
    if (t->timeout > 0) start_limit(w, t, co);
    lua_pushcfunction(co, lp_pool_task_entry);
    t->co = co;
    t->co_base = t;
    t->co_slot = slot;
    w->cos_task[slot] = t;
    t->owner = w->index;
    t->cancel_epoch = epoch;
    t->attempts++;
    atomic_store_explicit(&t->state, LP_TASK_RUNNING, memory_order_relaxed);
    w->nlive++;
    lp_stats_inc(&w->stats.run);
    if (eng->up && !t->parent) eng->up->ops->root_started(eng->up, t);
    if (t->depth > atomic_load_explicit(&eng->max_depth, memory_order_relaxed))
      atomic_store_explicit(&eng->max_depth, t->depth, memory_order_relaxed);
  }
  /* t may be a task run inline that ends during this resume and is freed;
   * the coroutine's base outlives the resume. */
  lp_task *base = t->co_base;
  lp_task *outer = w->current;
  w->current = t;
  lp_stats_switch(&w->stats, t);
  w->yield_kind = LP_YIELD_OTHER;
  int nres = 0;
  int limit_was = w->limit_on; /* a nested run (lp_pool_run_nested) is inside a resume */
  w->limit_on = 1;
  lua_State *running_was = atomic_load_explicit(&w->running, memory_order_relaxed);
  atomic_store(&w->running, co);
  /* After publishing: either lp_pool_stop_lua sees co, or we see `stopping`. */
  if (atomic_load(&eng->stopping)) lua_sethook(co, limit_hook, LUA_MASKCOUNT, 1);
  int st = lua_resume(co, outer ? outer->co : w->L, 0, &nres);
  atomic_store(&w->running, running_was);
  while (atomic_load(&w->hooking)) lp_cpu_relax();
  w->limit_on = limit_was;
  lp_task *now = w->current; /* differs from t when a task run inline yielded */
  w->current = outer;
  lp_stats_switch(&w->stats, outer);
  if (st == LUA_YIELD) {
    w->cos_task[base->co_slot] = now; /* a task run inline may be the one waiting */
    if (w->yield_kind != LP_YIELD_WAIT) {
      lua_pop(co, nres);
      lp_sched_yielded(&eng->sched, w->index, now);
    }
    return;
  }
  /* The coroutine's body has ended: that is its base task's body, even when
   * t was a task run inline (which ended inside it). Finishing may free the
   * base (when nothing else holds it): it is not touched afterwards. */
  int slot = base->co_slot;
  base->co = NULL;
  base->co_slot = -1;
  if (st == LUA_OK) {
    lp_task_finish(base, LP_TASK_OK, &w->result);
  } else if (retry(w, base)) {
    w->nlive--;
    co_put(w, slot, 0);
    return;
  } else {
    lp_fail_task(w, base, co);
  }
  w->nlive--;
  co_put(w, slot, st == LUA_OK);
}

/* lua_sethook is made to be called asynchronously (lua.c calls it from a
 * signal handler): it only stores the hook and marks the running frames.
 * From another thread, those frames must stay where they are while it
 * walks them: the coroutine stays alive (its resume waits for `hooking`)
 * and the worker's state frees nothing meanwhile (vm.c's allocator waits
 * for `hooking` too), so no frame the walk may reach is freed under it. */
void lp_pool_stop_lua(luapool *eng) {
  if (!eng->workers || eng->inline_mode) return;
  for (int i = 0; i < eng->nworkers; i++) {
    lp_worker *w = &eng->workers[i];
    atomic_fetch_add(&w->hooking, 1);
    lua_State *co = atomic_load(&w->running);
    if (co) lua_sethook(co, limit_hook, LUA_MASKCOUNT, 1);
    atomic_fetch_sub(&w->hooking, 1);
  }
}

/* Reads the workers' states from another thread: only while they sleep
 * with nothing to do (lp_sched_stalled), and only reading (lua_getstack
 * and lua_getinfo neither allocate nor push). */
int lp_pool_describe_waits(luapool *eng, char *buf, size_t n) {
  size_t used = 0;
  int count = 0;
  if (n) buf[0] = '\0';
  for (int i = 0; i < eng->nworkers; i++) {
    lp_worker *w = &eng->workers[i];
    for (int slot = 0; slot < w->ncos; slot++) {
      lp_task *t = w->cos_task ? w->cos_task[slot] : NULL;
      lua_State *co = w->cos_ptr[slot];
      if (!t || !co || lua_status(co) != LUA_YIELD) continue;
      count++;
      lua_Debug call, at;
      const char *fn = "?", *src = "?";
      int line = -1;
      if (lua_getstack(co, 0, &call) && lua_getinfo(co, "n", &call) && call.name) fn = call.name;
      for (int level = 1; lua_getstack(co, level, &at); level++)
        if (lua_getinfo(co, "Sl", &at) && at.currentline > 0) {
          src = at.short_src;
          line = at.currentline;
          break;
        }
      if (used + 1 < n) {
        int k =
            snprintf(buf + used, n - used, "\n  task '%s' (id %llu) waits in %s() at %s:%d",
                     lp_names_get(&eng->names, t->fn), (unsigned long long)t->id, fn, src, line);
        if (k > 0) used += (size_t)k < n - used ? (size_t)k : n - used - 1;
      }
      /* Tasks whose get() ran t inline, in this same coroutine, wait for it. */
      for (lp_task *p = t->parent; p && p->co == co && t->co == co; t = p, p = p->parent) {
        count++;
        if (used + 1 >= n) continue;
        int k = snprintf(buf + used, n - used,
                         "\n  task '%s' (id %llu) waits in get() for task '%s' (id %llu)",
                         lp_names_get(&eng->names, p->fn), (unsigned long long)p->id,
                         lp_names_get(&eng->names, t->fn), (unsigned long long)t->id);
        if (k > 0) used += (size_t)k < n - used ? (size_t)k : n - used - 1;
      }
    }
  }
  return count;
}

void lp_pool_wake_waits(luapool *eng) {
  int n = 0, cap = 0;
  lp_task **all = NULL;
  for (int i = 0; i < eng->nworkers; i++) {
    lp_worker *w = &eng->workers[i];
    for (int slot = 0; slot < w->ncos; slot++) {
      lp_task *t = w->cos_task ? w->cos_task[slot] : NULL;
      if (!t || !w->cos_ptr[slot] || lua_status(w->cos_ptr[slot]) != LUA_YIELD) continue;
      if (n == cap) {
        int more = cap ? cap * 2 : 16;
        lp_task **p = realloc(all, sizeof *p * (size_t)more);
        if (!p) break; /* out of memory: the tasks listed so far are woken */
        all = p;
        cap = more;
      }
      lp_task_ref(t); /* a wake may end others before we reach them */
      all[n++] = t;
    }
  }
  for (int i = 0; i < n; i++) lp_task_wake(all[i]);
  for (int i = 0; i < n; i++) lp_task_unref(all[i]);
  free(all);
}

void lp_pool_yield_current(lp_worker *w) { w->yield_kind = LP_YIELD_AGAIN; }

/* Hands every sleeper whose time has come back to its task; with `all`,
 * every sleeper (shut-down). Returns how many. */
static int fire_timers(lp_worker *w, int all) {
  double now = all ? 1e300 : lp_now();
  int n = 0;
  lp_task *t;
  while ((t = lp_timers_pop_due(&w->timers, now))) {
    lp_task_wake(t);
    n++;
  }
  return n;
}

/* The next task to run. A task that waits for room for its records
 * (hold.c) has a coroutine; a new task started meanwhile would make its
 * records and wait too, one coroutine more each: so while any of w's
 * tasks wait so, w only resumes tasks it has begun. The host wakes them
 * each time it has caught up, so this lasts no longer. */
static lp_task *pick(lp_worker *w) {
  lp_sched_begun_only(&w->eng->sched, w->index, w->room_waits > 0); /* and it parks so */
  if (w->room_waits) return lp_sched_next_begun(&w->eng->sched, w->index);
  return lp_sched_next(&w->eng->sched, w->index);
}

static void loop(lp_worker *w) {
  luapool *eng = w->eng;
  lp_sched *s = &eng->sched;
  unsigned since_timers = 0;
  for (;;) {
    if (w->timers.n && ++since_timers >= 32) {
      since_timers = 0;
      fire_timers(w, atomic_load_explicit(&eng->stopping, memory_order_relaxed));
    }
    lp_task *t = pick(w);
    if (t) {
      run(w, t);
      if (w->cache.spill) lp_spill_tick(&eng->report, w->cache.spill, 0);
      continue;
    }
    lp_spill_tick(&eng->report, w->cache.spill, 1); /* a reader may wait for them */
    if (w->timers.n && fire_timers(w, atomic_load(&eng->stopping))) continue;
    if (atomic_load(&s->stop) && w->nlive == 0) return;
    lp_stats_idle(w, 1);
    lp_sched_spinning(s, 1);
    for (int i = 0; i < SPIN_ROUNDS && !t; i++) {
      lp_cpu_relax();
      if (i % 64 == 63) t = pick(w);
    }
    lp_sched_spinning(s, -1);
    if (t) {
      lp_stats_idle(w, 0);
      run(w, t);
      continue;
    }
    if (atomic_load(&s->stop) && w->nlive == 0) return;
    double next = lp_timers_next(&w->timers, lp_now());
    if (eng->up) eng->up->ops->idle(eng->up);
    lp_sched_park(s, w->index, next);
    lp_stats_idle(w, 0);
  }
}

static int start_state(luapool *eng, lp_worker *w);

/* A worker makes its own Lua state, so everything the state allocates comes
 * from this thread's malloc arena, not interleaved with the other workers'
 * states. It reports, then waits for the host's go (or stop). */
static void *worker_main(void *arg) {
  lp_worker *w = arg;
  luapool *eng = w->eng;
  lp_task_cache_self = &w->cache;
  int rc = start_state(eng, w);
  if (lp_engine_worker_started(eng, &w->start_rc, rc)) loop(w);
  lp_task_cache_self = NULL;
  return NULL;
}

/* ---- inline mode ---- */

/* In inline mode nothing is ever left on a timer: timed waits are waited
 * out on the spot (lp_lib_suspend), so an empty queue means the end. */
int lp_pool_run_inline(luapool *eng, void (*between)(luapool *eng)) {
  lp_worker *w = &eng->workers[0];
  lp_task_cache_self = &w->cache; /* the host thread is the worker now */
  lp_task *t;
  while ((t = lp_sched_next(&eng->sched, 0))) {
    run(w, t);
    lp_spill_tick(&eng->report, w->cache.spill, 1);
    lp_report_deliver(&eng->report, 0);
    if (between) between(eng);
  }
  lp_task_cache_self = NULL;
  return w->nlive ? LUAPOOL_EDEADLOCK : 0;
}

void lp_pool_run_nested(lp_worker *w, lp_task *until) {
  lp_task *t;
  while (!lp_task_finished(until) && (t = lp_sched_next(&w->eng->sched, w->index))) run(w, t);
}

/* ---- start and stop ---- */

/* Runs on the worker's thread: the message goes to w->errmsg only (the
 * host copies it into the engine's), as several workers may fail at once. */
static int start_state(luapool *eng, lp_worker *w) {
  w->L = lp_vm_new(w);
  if (!w->L) {
    w->errmsg = strdup("cannot create a Lua state");
    return LUAPOOL_ENOMEM;
  }
  lua_newtable(w->L);
  w->cos_ref = luaL_ref(w->L, LUA_REGISTRYINDEX);
  if (lp_vm_load(w->L, eng->script, eng->script_len, eng->chunkname, &w->errmsg) != 0)
    return LUAPOOL_ESCRIPT;
  return 0;
}

int lp_pool_start(luapool *eng) {
  int n = eng->nworkers;
  eng->workers = calloc((size_t)n, sizeof(lp_worker));
  if (!eng->workers) return lp_engine_error(eng, LUAPOOL_ENOMEM, "out of memory");
  for (int i = 0; i < n; i++) {
    lp_worker *w = &eng->workers[i];
    w->eng = eng;
    w->index = i;
    w->mem_limit = eng->cfg.memory_limit;
    lp_task_cache_init(&w->cache);
    lp_buf_init(&w->result);
    if (eng->cfg.trace_path) w->stats.trace = lp_tracebuf_new(); /* NULL: no room, no events */
  }
  if (eng->inline_mode) { /* the host's thread is the worker */
    lp_worker *w = &eng->workers[0];
    int rc = start_state(eng, w);
    if (rc != 0) return lp_engine_error(eng, rc, "%s", w->errmsg ? w->errmsg : "out of memory");
  } else {
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
      lp_worker *w = &eng->workers[i];
      if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        rc = lp_engine_error(eng, LUAPOOL_ESYS, "cannot start worker thread %d", i + 1);
      else
        w->started = 1;
    }
    /* Start-up returns only when every worker has its script loaded. */
    for (int i = 0; i < n; i++) {
      lp_worker *w = &eng->workers[i];
      int started = w->started ? lp_engine_worker_ready(eng, &w->start_rc) : 1;
      if (rc == 0 && started != 1)
        rc = lp_engine_error(eng, started, "%s", w->errmsg ? w->errmsg : "out of memory");
    }
    if (rc != 0) {
      lp_engine_workers_go(eng, -1); /* every worker leaves at once */
      return rc;
    }
  }
  /* The workers wait for the go: reading worker 0's state is safe. */
  if (lp_vm_function_names(eng->workers[0].L, &eng->defined, &eng->ndefined) != 0)
    return lp_engine_error(eng, LUAPOOL_ENOMEM, "out of memory");
  if (!eng->inline_mode) lp_engine_workers_go(eng, 1);
  return 0;
}

void lp_pool_stop(luapool *eng) {
  if (!eng->workers) return;
  lp_sched_stop(&eng->sched);
  for (int i = 0; i < eng->nworkers; i++)
    if (eng->workers[i].started) pthread_join(eng->workers[i].thread, NULL);
  for (int i = 0; i < eng->nworkers; i++) {
    lp_worker *w = &eng->workers[i];
    if (w->L) lua_close(w->L); /* runs the futures' finalizers: last task references go */
    lp_timers_free(&w->timers);
    free(w->cos_ptr);
    free(w->cos_free);
    free(w->cos_empty);
    free(w->cos_task);
    lp_buf_free(&w->result);
  }
}

void lp_pool_free(luapool *eng) {
  if (!eng->workers) return;
  /* Last: every task record and report node lives in these slabs. */
  for (int i = 0; i < eng->nworkers; i++) {
    lp_task_cache_drain(&eng->workers[i].cache);
    lp_tracebuf_free(eng->workers[i].stats.trace); /* read by observe/ at close */
    free(eng->workers[i].errmsg);
  }
  free(eng->workers);
  eng->workers = NULL;
}
