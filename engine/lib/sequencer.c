/*
 * sequencer.c - named ordered sections shared by every task of a run:
 * luapool.sequencer(name [, first]) and seq:run(ticket, fn, ...), which
 * runs fn once every ticket from first to ticket - 1 has had its section,
 * whichever worker holds it. Finding a sequencer by name is the registry's
 * job (sync.c).
 *
 * DESIGN. Each sequencer has a spinlock guarding all of its fields. Any
 * worker thread takes it, for a few field updates: Lua never runs under it
 * (only the rare growth of the ticket table or of the worker's own timer
 * heap allocates there). No other lock nests with it: tasks are handed back
 * to the scheduler after unlocking, and the registry mutex is released
 * before a sequencer's spinlock is taken.
 *
 * Waiting follows lib.h. A task whose ticket is not yet due puts it in the
 * ticket table under the lock, registers its timer, arms itself, unlocks
 * and yields. The task whose section ends (or that was granted one but is
 * cancelled) moves `next` on, takes the next ticket out of the table, makes
 * its task the holder and calls lp_task_disarm, under the same lock; only
 * when that succeeds does it hand the task back (lp_sched_resume), after
 * unlocking. So a granted task stays suspended until its granter resumes
 * it, and a granter never touches a task that has moved on. A task resumed
 * by anyone else (its timeout, a cancel) finds its ticket still in the
 * table; a cancelled one abandons it there, and the sequence skips it.
 * Tickets are granted one at a time, in ticket order: no thundering herd.
 *
 * Ownership. A sequencer owns its ticket table, whose slots point at
 * waiting tasks but own nothing; lp_sequencer_free frees the table and the
 * sequencer at engine close.
 */
#include "sync_int.h"

#include <stdint.h>
#include <stdlib.h>

#include <lauxlib.h>

#include "engine.h"
#include "lib.h"
#include "pool.h"
#include "spin.h"
#include "timer.h"

#define SEQUENCER_MT "luapool.sequencer"

typedef struct tslot {
  lua_Integer ticket;
  lp_task *task; /* the waiting task; NULL: abandoned by a cancelled task */
  int used;
} tslot;

struct lp_seq {
  _Atomic int lock; /* spinlock over every field below */
  const char *name; /* interned */
  lua_Integer first;
  int first_explicit; /* first was given by a call (or adopted from one) */
  lua_Integer next;   /* the ticket whose section runs next */
  lp_task *holder;    /* the task granted or running `next`; NULL: none yet */
  tslot *slots;       /* waiting tickets: open addressing, linear probing */
  size_t cap;         /* power of two, or 0 */
  size_t n;
};

static size_t home(lua_Integer ticket, size_t mask) {
  uint64_t h = (uint64_t)ticket;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return (size_t)h & mask;
}

static tslot *slot_find(lp_seq *s, lua_Integer ticket) {
  if (!s->cap) return NULL;
  size_t mask = s->cap - 1;
  for (size_t i = home(ticket, mask);; i = (i + 1) & mask) {
    if (!s->slots[i].used) return NULL;
    if (s->slots[i].ticket == ticket) return &s->slots[i];
  }
}

static int slot_insert(lp_seq *s, lua_Integer ticket, lp_task *t) {
  if ((s->n + 1) * 2 > s->cap) {
    size_t ncap = s->cap ? s->cap * 2 : 16;
    tslot *ns = calloc(ncap, sizeof *ns);
    if (!ns) return -1;
    for (size_t i = 0; i < s->cap; i++) {
      if (!s->slots[i].used) continue;
      size_t j = home(s->slots[i].ticket, ncap - 1);
      while (ns[j].used) j = (j + 1) & (ncap - 1);
      ns[j] = s->slots[i];
    }
    free(s->slots);
    s->slots = ns;
    s->cap = ncap;
  }
  size_t mask = s->cap - 1, i = home(ticket, mask);
  while (s->slots[i].used) i = (i + 1) & mask;
  s->slots[i] = (tslot){ticket, t, 1};
  s->n++;
  return 0;
}

/* Backward-shift deletion keeps every probe chain unbroken. */
static void slot_remove(lp_seq *s, tslot *e) {
  size_t mask = s->cap - 1, i = (size_t)(e - s->slots), j = i;
  for (;;) {
    j = (j + 1) & mask;
    if (!s->slots[j].used) break;
    size_t k = home(s->slots[j].ticket, mask);
    if (i <= j ? (i < k && k <= j) : (i < k || k <= j)) continue;
    s->slots[i] = s->slots[j];
    i = j;
  }
  s->slots[i].used = 0;
  s->n--;
}

/* Under the lock: the section of `next` is over. Moves on to the next
 * ticket, skipping abandoned ones, and grants it to its waiting task.
 * Returns the task to hand back after unlocking, or NULL. */
static lp_task *advance(lp_seq *s) {
  s->holder = NULL;
  for (;;) {
    s->next++;
    tslot *e = slot_find(s, s->next);
    if (!e) return NULL;
    lp_task *t = e->task;
    slot_remove(s, e);
    if (!t) continue;
    s->holder = t;
    return lp_task_disarm(t) ? t : NULL;
  }
}

static lp_seq *check_seq(lua_State *L, const char *what) {
  return lp_sync_check_self(L, what, "sequencer");
}

/* The section has run (or raised): stack is seq, ticket, results or error. */
static int section_done(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  lp_seq *s = *(lp_seq **)lua_touserdata(L, 1);
  lua_Integer ticket = lua_tointeger(L, 2);
  lp_task *wake = NULL;
  lp_spin_lock(&s->lock);
  if (s->next == ticket) wake = advance(s);
  lp_spin_unlock(&s->lock);
  lp_sync_hand_back(wake);
  if (status != LUA_OK && status != LUA_YIELD) return lua_error(L);
  return lua_gettop(L) - 2;
}

/* Calls fn(...) (stack: seq, ticket, fn, args) in the caller's task; fn
 * may yield. */
static int run_section(lua_State *L) {
  int st = lua_pcallk(L, lua_gettop(L) - 3, LUA_MULTRET, 0, 0, section_done);
  return section_done(L, st, 0);
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lp_task *self = lp_worker_of(L)->current;
  lp_lib_resumed(L, self);
  lp_seq *s = *(lp_seq **)lua_touserdata(L, 1);
  lua_Integer ticket = lua_tointeger(L, 2);
  lp_spin_lock(&s->lock);
  int cancelled = lp_task_cancelled(self);
  if (s->holder == self && s->next == ticket) { /* our turn */
    lp_task *wake = cancelled ? advance(s) : NULL;
    lp_spin_unlock(&s->lock);
    if (!cancelled) return run_section(L);
    lp_sync_hand_back(wake);
    return lp_sync_raise_cancelled(L, self);
  }
  tslot *e = slot_find(s, ticket); /* still ours: only a grant removes it */
  if (!e) {
    lp_spin_unlock(&s->lock);
    return luaL_error(L, "luapool.sequencer:run: ticket %I lost its place (internal error)",
                      ticket);
  }
  if (cancelled) {
    e->task = NULL; /* the sequence will skip this ticket */
    lp_spin_unlock(&s->lock);
    return lp_sync_raise_cancelled(L, self);
  }
  int oom;
  double td = lp_sync_add_timer(L, self, -1, &oom);
  if (oom) {
    e->task = NULL;
    lp_spin_unlock(&s->lock);
    return luaL_error(L, "luapool.sequencer:run: out of memory");
  }
  lp_task_arm(self);
  lp_spin_unlock(&s->lock);
  return lp_lib_suspend(L, self, td, ctx, wait_k);
}

/* seq:run(ticket, fn, ...) -> fn(...)'s results, once every ticket from
 * first to ticket - 1 has had its section. */
static int seq_run(lua_State *L) {
  lp_seq *s = check_seq(L, "luapool.sequencer:run");
  lua_Integer ticket = 0;
  if (!lp_sync_opt_int(L, 2, "luapool.sequencer:run", "ticket", &ticket))
    return luaL_error(L, "luapool.sequencer:run: ticket must be an integer, not nil");
  if (ticket == LUA_MAXINTEGER)
    return luaL_error(L, "luapool.sequencer:run: ticket %I is too large", ticket);
  if (lua_type(L, 3) != LUA_TFUNCTION)
    return luaL_error(L, "luapool.sequencer:run: argument 2 must be a function, not %s",
                      luaL_typename(L, 3));
  lp_task *self = lp_lib_running(L, "luapool.sequencer:run");
  lp_spin_lock(&s->lock);
  const char *why = NULL;
  lua_Integer first = s->first, next = s->next;
  tslot *e = NULL;
  if (ticket < first)
    why = "is below the sequencer's first ticket";
  else if (ticket < next)
    why = "has already had its section";
  else if (ticket == next && s->holder)
    why = "is taken: its section is running or about to";
  else if (ticket == next) {
    s->holder = self;
    lp_spin_unlock(&s->lock);
    return run_section(L);
  } else if (s->holder == self)
    why = "cannot be waited for inside this task's own section";
  else if ((e = slot_find(s, ticket)) != NULL && e->task)
    why = "is taken by another waiting task";
  if (why) {
    lp_spin_unlock(&s->lock);
    return luaL_error(L,
                      "luapool.sequencer:run: ticket %I of sequencer '%s' %s (first %I, next %I)",
                      ticket, s->name, why, first, next);
  }
  if (lp_worker_of(L)->eng->inline_mode || L != self->co || !lua_isyieldable(L)) {
    lp_spin_unlock(&s->lock);
    lp_sync_check_can_wait(L, "luapool.sequencer:run", -1);
  }
  int oom;
  double td = lp_sync_add_timer(L, self, -1, &oom);
  if (!oom) {
    if (e)
      e->task = self; /* an abandoned ticket, taken up again */
    else if (slot_insert(s, ticket, self) != 0)
      oom = 1;
    if (oom) lp_timers_remove(&lp_worker_of(L)->timers, self);
  }
  if (oom) {
    lp_spin_unlock(&s->lock);
    return luaL_error(L, "luapool.sequencer:run: out of memory");
  }
  lp_task_arm(self);
  lp_spin_unlock(&s->lock);
  return lp_lib_suspend(L, self, td, 0, wait_k);
}

static int seq_tostring(lua_State *L) {
  lp_seq *s = check_seq(L, "luapool.sequencer");
  lp_spin_lock(&s->lock);
  lua_Integer next = s->next;
  lp_spin_unlock(&s->lock);
  lua_pushfstring(L, "luapool.sequencer '%s' (next ticket %I)", s->name, next);
  return 1;
}

static void *make_seq(const char *name, lua_Integer first, int given) {
  lp_seq *s = calloc(1, sizeof *s);
  if (s) {
    s->name = name;
    s->first = s->next = first;
    s->first_explicit = given;
  }
  return s;
}

/* luapool.sequencer(name [, first]). A sequencer made by a call without
 * `first` takes the first one given, as long as nothing has happened in it
 * yet; after that, all must agree. */
static int l_sequencer(lua_State *L) {
  lp_lib_not_in_process(L, "luapool.sequencer");
  lua_Integer first = 1;
  int given = lp_sync_opt_int(L, 2, "luapool.sequencer", "first", &first);
  lp_seq *s = lp_sync_lookup(L, "luapool.sequencer", LP_SYNC_SEQUENCER, make_seq, first, given);
  if (!given) return 1;
  lp_spin_lock(&s->lock);
  lua_Integer had = s->first;
  int fresh = s->next == s->first && !s->holder && s->n == 0;
  int clash = had != first && (s->first_explicit || !fresh);
  if (!clash && had != first) s->first = s->next = first; /* fresh: adopt it */
  if (!clash) s->first_explicit = 1;
  lp_spin_unlock(&s->lock);
  if (clash)
    return luaL_error(L, "luapool.sequencer: sequencer '%s' starts at ticket %I, not %I", s->name,
                      had, first);
  return 1;
}

/* ---- registration and clean-up ---- */

void lp_sequencer_open(lua_State *L, int module) {
  static const luaL_Reg methods[] = {{"run", seq_run}, {NULL, NULL}};
  lp_sync_add_class(L, module, SEQUENCER_MT, methods, seq_tostring, "sequencer", l_sequencer);
}

void lp_sequencer_free(lp_seq *s) {
  if (!s) return;
  free(s->slots);
  free(s);
}
