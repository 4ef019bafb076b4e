/*
 * sync.c - named channels and ordered sections (sequencers) shared by every
 * task of a run: luapool.channel(name [, capacity]) and
 * luapool.sequencer(name [, first]).
 *
 * DESIGN. Both are engine-wide objects found by name. The registry
 * (eng->sync) maps a name's id in eng->names to the object; its mutex is
 * taken only the first time a Lua state meets a name, because each state
 * keeps its own name -> userdata cache. Objects live until lp_sync_free at
 * engine close, which runs after every worker has been joined, so a
 * userdata holds a bare pointer and needs no __gc.
 *
 * Each object has a spinlock guarding all of its fields. Any worker thread
 * takes it, for a few pointer moves: packing, unpacking and Lua never run
 * under it (only the rare growth of a sequencer's table or of the worker's
 * own timer heap allocates there). No other lock nests with it: tasks are
 * handed back to the scheduler after unlocking, and the registry mutex is
 * released before an object's spinlock is taken.
 *
 * Waiting follows lib.h. A task that must wait links a node (channel) or a
 * ticket slot (sequencer) under the lock, registers its timer, arms itself,
 * unlocks and yields. A waker unlinks the node, records the outcome in it
 * and calls lp_task_disarm under the same lock; only when that succeeds
 * does it hand the task back (lp_sched_resume), after unlocking. So a task
 * whose node a waker took stays suspended until that waker resumes it, and
 * a waker never touches a task that has moved on. A task resumed by anyone
 * else (its timeout, a cancel) finds its node still linked and unlinks it
 * itself. Waiters are woken one per item, slot or ticket, in FIFO order
 * (channels) or ticket order (sequencers): no thundering herd. In threaded
 * runs a wait without a timeout still registers a far-off timer, so a
 * cancelled run, which fires every timer, reaches tasks blocked here.
 *
 * Ownership. A channel owns its queued items and its linked waiter nodes
 * (a waiting pusher's node holds its packed item). A node unlinked by a
 * waker belongs to its task, which frees it, and any item in it, when it
 * resumes; a node a task unlinks itself is freed by that task. Popped items
 * are freed once unpacked into the popping state. lp_sync_free frees what
 * is left: queued items, nodes still linked, sequencer tables, the registry.
 */
#include "sync.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "engine.h"
#include "lib.h"
#include "pool.h"
#include "spin.h"
#include "timer.h"
#include "vm.h"

#define CHANNEL_MT "luapool.channel"
#define SEQUENCER_MT "luapool.sequencer"
#define FOREVER 1e9 /* seconds: the timer of a wait without a timeout */

/* ---- the registry ---- */

typedef struct lp_chan lp_chan;
typedef struct lp_seq lp_seq;

struct lp_sync {
  pthread_mutex_t lock; /* guards the tables below, not the objects */
  void **chans;         /* lp_chan *, indexed by name id; NULL where none */
  size_t nchans;
  void **seqs;          /* lp_seq *, the same way */
  size_t nseqs;
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

/* ---- helpers ---- */

static void raise_cancelled(lua_State *L, lp_task *self) {
  lp_lib_check_cancelled(L, self);
  luaL_error(L, "luapool: task cancelled");
}

/* Hands a task whose arm a waker took back to its owner. */
static void hand_back(lp_task *t) {
  if (t) lp_sched_resume(&t->eng->sched, t->owner, t);
}

/* Registers the timer of a wait that starts now and returns its time: the
 * caller's deadline, or far away in threaded runs (see DESIGN). Called
 * before anything is linked, so failing leaves nothing behind; the same
 * entry is then moved, not allocated, by lp_lib_suspend. */
static double add_timer(lua_State *L, lp_task *self, double deadline, int *oom) {
  lp_worker *w = lp_worker_of(L);
  if (deadline < 0 && !w->eng->inline_mode) deadline = lp_now() + FOREVER;
  *oom = deadline >= 0 && lp_timers_add(&w->timers, self, deadline) != 0;
  return deadline;
}

/* Whether the running task could wait here for `deadline`: it runs in its
 * own coroutine, can yield, and (in an inline run) has a deadline. */
static int can_wait(lua_State *L, double deadline) {
  lp_worker *w = lp_worker_of(L);
  lp_task *self = w ? w->current : NULL;
  return self && L == self->co && lua_isyieldable(L) && (deadline >= 0 || !w->eng->inline_mode);
}

/* The running task if it can wait here; raises otherwise (for an inline
 * run: the deadlock error). Call with no lock held and nothing to free. */
static lp_task *check_can_wait(lua_State *L, const char *what, double deadline) {
  lp_task *self = lp_lib_waiting(L, what);
  if (lp_worker_of(L)->eng->inline_mode && deadline < 0)
    lp_lib_suspend(L, self, -1, 0, NULL); /* raises the deadlock error */
  return self;
}

/* The object behind the userdata at 1, whose metatable the calling method
 * holds as upvalue 1: cheaper than luaL_checkudata's registry look-up. */
static void *check_self(lua_State *L, const char *what, const char *kind) {
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
static int opt_int(lua_State *L, int idx, const char *what, const char *param,
                   lua_Integer *v) {
  if (lua_isnoneornil(L, idx)) return 0;
  int isint = 0;
  if (lua_type(L, idx) == LUA_TNUMBER) *v = lua_tointegerx(L, idx, &isint);
  if (!isint)
    luaL_error(L, "%s: %s must be an integer, not %s %s", what, param, luaL_typename(L, idx),
               luaL_tolstring(L, idx, NULL));
  return 1;
}

typedef void *(*make_fn)(const char *name, lua_Integer arg, int given);

/* Pushes this state's userdata for the object named by the string at 1 and
 * returns the object. The constructor's upvalues are the state's cache
 * (name -> userdata) and the metatable; `seqs` picks the registry's table,
 * and make() creates a missing object under the registry lock. */
static void *lookup(lua_State *L, const char *what, int seqs, make_fn make, lua_Integer arg,
                    int given) {
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

/* ---- channels ---- */

typedef struct item {
  struct item *next;
  size_t len;
  char data[]; /* one packed value (pack.h) */
} item;

enum { W_IDLE = 0, W_WAITING, W_DONE, W_CLOSED };

typedef struct wnode {
  struct wnode *next, *prev; /* in the channel's pusher or popper list */
  struct wnode *wake;        /* a closer's private list of tasks to resume */
  lp_task *task;
  item *it;  /* a pusher's item until it is queued; the item handed to a popper */
  int state; /* W_*; under the channel's lock once linked */
} wnode;

typedef struct wlist {
  wnode *head, *tail;
} wlist;

struct lp_chan {
  _Atomic int lock; /* spinlock over every field below */
  const char *name; /* interned: lives as long as the engine */
  lua_Integer cap;  /* 0: unbounded */
  int cap_explicit; /* cap was given by a call (or adopted from one) */
  int closed;
  item *head, *tail;
  lua_Integer count;
  wlist pushers; /* waiting only while the queue is full */
  wlist poppers; /* waiting only while the queue is empty */
};

static void wl_append(wlist *l, wnode *n) {
  n->next = NULL;
  n->prev = l->tail;
  if (l->tail) l->tail->next = n;
  else l->head = n;
  l->tail = n;
}

static void wl_remove(wlist *l, wnode *n) {
  if (n->prev) n->prev->next = n->next;
  else l->head = n->next;
  if (n->next) n->next->prev = n->prev;
  else l->tail = n->prev;
  n->next = n->prev = NULL;
}

static void q_append(lp_chan *ch, item *it) {
  it->next = NULL;
  if (ch->tail) ch->tail->next = it;
  else ch->head = it;
  ch->tail = it;
  ch->count++;
}

static item *q_take(lp_chan *ch) {
  item *it = ch->head;
  if (!it) return NULL;
  ch->head = it->next;
  if (!ch->head) ch->tail = NULL;
  ch->count--;
  return it;
}

/* Under the lock: ends the wait of the first node of l with `state`.
 * Returns the task to hand back after unlocking, or NULL if it is already
 * on its way (it will find the state). */
static lp_task *end_wait(wlist *l, int state, item *it) {
  wnode *n = l->head;
  wl_remove(l, n);
  if (it) n->it = it;
  n->state = state;
  return lp_task_disarm(n->task) ? n->task : NULL;
}

static lp_chan *check_chan(lua_State *L, const char *what) {
  return check_self(L, what, "channel");
}

static int unpack_item(lua_State *L) {
  item *it = lua_touserdata(L, 1);
  lua_pop(L, 1);
  lp_pack_ctx ctx = lp_vm_pack_ctx(L, 1);
  char err[256];
  int n = 0;
  if (lp_unpack_values(L, it->data, it->len, &ctx, &n, err, sizeof err) != 0)
    return luaL_error(L, "luapool.channel:pop: cannot read an item: %s", err);
  if (n != 1) return luaL_error(L, "luapool.channel:pop: cannot read an item: %d values", n);
  return 1;
}

/* Unpacks a popped item into L and frees it, also when unpacking raises. */
static int deliver(lua_State *L, item *it) {
  lua_pushcfunction(L, unpack_item);
  lua_pushlightuserdata(L, it);
  int st = lua_pcall(L, 1, 1, 0);
  free(it);
  if (st != LUA_OK) return lua_error(L);
  return 1;
}

static int closed_error(lua_State *L, lp_chan *ch) {
  return luaL_error(L, "luapool.channel:push: channel '%s' is closed", ch->name);
}

static int push_k(lua_State *L, int status, lua_KContext ctx);

/* One pass of push for the item `it` (fresh call) or the node n (resumed
 * wait, or a fresh node about to be linked). Loops until it can return,
 * raise, or yield. */
static int push_loop(lua_State *L, lp_chan *ch, item *it, wnode *n) {
  lp_task *self = n ? n->task : NULL;
  for (;;) {
    lp_task *wake = NULL;
    lp_spin_lock(&ch->lock);
    if (n && n->state == W_DONE) { /* a popper took our item */
      lp_spin_unlock(&ch->lock);
      free(n);
      return 0;
    }
    if (n && n->state == W_CLOSED) {
      lp_spin_unlock(&ch->lock);
      free(n->it);
      free(n);
      return closed_error(L, ch);
    }
    if (n && n->state == W_WAITING) {
      /* Resumed without our item taken: a timer (the run is stopping) or a
       * cancel, or a stray wake. */
      if (lp_task_cancelled(self)) {
        wl_remove(&ch->pushers, n);
        lp_spin_unlock(&ch->lock);
        free(n->it);
        free(n);
        raise_cancelled(L, self);
      }
    } else if (ch->closed) {
      lp_spin_unlock(&ch->lock);
      free(n);
      free(it);
      return closed_error(L, ch);
    } else if (ch->poppers.head) {
      wake = end_wait(&ch->poppers, W_DONE, it);
      lp_spin_unlock(&ch->lock);
      hand_back(wake);
      free(n);
      return 0;
    } else if (ch->cap == 0 || ch->count < ch->cap) {
      q_append(ch, it);
      lp_spin_unlock(&ch->lock);
      free(n);
      return 0;
    } else if (!n) { /* full: get ready to wait, then look again */
      lp_spin_unlock(&ch->lock);
      if (!can_wait(L, -1)) {
        free(it);
        check_can_wait(L, "luapool.channel:push", -1);
      }
      self = lp_worker_of(L)->current;
      if (lp_task_cancelled(self)) {
        free(it);
        raise_cancelled(L, self);
      }
      n = calloc(1, sizeof *n);
      if (!n) {
        free(it);
        return luaL_error(L, "luapool.channel:push: out of memory");
      }
      n->task = self;
      continue;
    } else { /* full, with a node: wait in line */
      n->it = it;
      n->state = W_WAITING;
      wl_append(&ch->pushers, n);
    }
    int oom;
    double td = add_timer(L, self, -1, &oom);
    if (oom) {
      wl_remove(&ch->pushers, n);
      lp_spin_unlock(&ch->lock);
      free(n->it);
      free(n);
      return luaL_error(L, "luapool.channel:push: out of memory");
    }
    lp_task_arm(self);
    lp_spin_unlock(&ch->lock);
    return lp_lib_suspend(L, self, td, (lua_KContext)n, push_k);
  }
}

static int push_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lp_lib_resumed(L, lp_worker_of(L)->current);
  return push_loop(L, *(lp_chan **)lua_touserdata(L, 1), NULL, (wnode *)ctx);
}

/* ch:push(v): appends a copy of v; yields while the channel is full. */
static int ch_push(lua_State *L) {
  lp_chan *ch = check_chan(L, "luapool.channel:push");
  if (lua_isnone(L, 2))
    return luaL_error(L, "luapool.channel:push: a value expected (nil will do)");
  lua_settop(L, 2);
  lp_buf b;
  lp_buf_init(&b);
  char err[320];
  lp_pack_ctx ctx = lp_vm_pack_ctx(L, 1);
  if (lp_pack_values(L, 2, 1, &b, &ctx, err, sizeof err) != 0)
    return luaL_error(L, "luapool.channel:push: %s", err);
  item *it = malloc(sizeof *it + b.len);
  if (it) {
    it->len = b.len;
    memcpy(it->data, b.data, b.len);
  }
  lp_buf_free(&b);
  if (!it) return luaL_error(L, "luapool.channel:push: out of memory");
  return push_loop(L, ch, it, NULL);
}

static int pop_k(lua_State *L, int status, lua_KContext ctx);

/* One pass of pop; the deadline (-1: none) is at stack index 3. n is the
 * task's node once it has one. */
static int pop_loop(lua_State *L, lp_chan *ch, wnode *n) {
  double deadline = lua_tonumber(L, 3);
  lp_task *self = n ? n->task : NULL;
  for (;;) {
    lp_task *wake = NULL;
    lp_spin_lock(&ch->lock);
    if (n && n->state == W_DONE) { /* a pusher handed us an item */
      lp_spin_unlock(&ch->lock);
      item *it = n->it;
      free(n);
      return deliver(L, it);
    }
    if (n && n->state == W_CLOSED) {
      lp_spin_unlock(&ch->lock);
      free(n);
      lua_pushnil(L);
      lua_pushliteral(L, "closed");
      return 2;
    }
    item *it = q_take(ch);
    if (it) {
      if (ch->pushers.head && (ch->cap == 0 || ch->count < ch->cap)) {
        /* A slot opened: the first waiting pusher's item goes in. */
        item *pit = ch->pushers.head->it;
        ch->pushers.head->it = NULL;
        q_append(ch, pit);
        wake = end_wait(&ch->pushers, W_DONE, NULL);
      }
      if (n && n->state == W_WAITING) wl_remove(&ch->poppers, n);
      lp_spin_unlock(&ch->lock);
      hand_back(wake);
      free(n);
      return deliver(L, it);
    }
    int closed = ch->closed, timeout = deadline >= 0 && lp_now() >= deadline;
    int cancelled = n && n->state == W_WAITING && lp_task_cancelled(self);
    if (closed || timeout || cancelled) {
      if (n && n->state == W_WAITING) wl_remove(&ch->poppers, n);
      lp_spin_unlock(&ch->lock);
      free(n);
      if (cancelled) raise_cancelled(L, self);
      lua_pushnil(L);
      lua_pushstring(L, closed ? "closed" : "timeout");
      return 2;
    }
    if (!n) { /* empty: get ready to wait, then look again */
      lp_spin_unlock(&ch->lock);
      self = check_can_wait(L, "luapool.channel:pop", deadline);
      lp_lib_check_cancelled(L, self);
      n = calloc(1, sizeof *n);
      if (!n) return luaL_error(L, "luapool.channel:pop: out of memory");
      n->task = self;
      continue;
    }
    if (n->state == W_IDLE) {
      n->state = W_WAITING;
      wl_append(&ch->poppers, n);
    }
    int oom;
    double td = add_timer(L, self, deadline, &oom);
    if (oom) {
      wl_remove(&ch->poppers, n);
      lp_spin_unlock(&ch->lock);
      free(n);
      return luaL_error(L, "luapool.channel:pop: out of memory");
    }
    lp_task_arm(self);
    lp_spin_unlock(&ch->lock);
    return lp_lib_suspend(L, self, td, (lua_KContext)n, pop_k);
  }
}

static int pop_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lp_lib_resumed(L, lp_worker_of(L)->current);
  return pop_loop(L, *(lp_chan **)lua_touserdata(L, 1), (wnode *)ctx);
}

/* ch:pop([timeout]) -> the next value; nil, "closed" once closed and
 * drained; nil, "timeout" when the timeout passes first. */
static int ch_pop(lua_State *L) {
  lp_chan *ch = check_chan(L, "luapool.channel:pop");
  double deadline = lp_lib_deadline(L, 2);
  lua_settop(L, 2);
  lua_pushnumber(L, deadline);
  return pop_loop(L, ch, NULL);
}

/* ch:close() -> true if this call closed it, false if it was closed. */
static int ch_close(lua_State *L) {
  lp_chan *ch = check_chan(L, "luapool.channel:close");
  wnode *wake = NULL;
  lp_spin_lock(&ch->lock);
  int was = ch->closed;
  ch->closed = 1;
  wlist *lists[2] = {&ch->poppers, &ch->pushers};
  for (int i = 0; i < 2; i++)
    while (lists[i]->head) {
      wnode *n = lists[i]->head;
      if (end_wait(lists[i], W_CLOSED, NULL)) {
        n->wake = wake; /* its task stays suspended until we resume it */
        wake = n;
      }
    }
  lp_spin_unlock(&ch->lock);
  while (wake) {
    wnode *next = wake->wake;
    hand_back(wake->task); /* may free the node */
    wake = next;
  }
  lua_pushboolean(L, !was);
  return 1;
}

static int ch_tostring(lua_State *L) {
  lp_chan *ch = check_chan(L, "luapool.channel");
  lp_spin_lock(&ch->lock);
  lua_Integer count = ch->count;
  int closed = ch->closed;
  lp_spin_unlock(&ch->lock);
  lua_pushfstring(L, "luapool.channel '%s' (%I item%s%s)", ch->name, count, count == 1 ? "" : "s",
                  closed ? ", closed" : "");
  return 1;
}

static void *make_chan(const char *name, lua_Integer cap, int given) {
  lp_chan *ch = calloc(1, sizeof *ch);
  if (ch) {
    ch->name = name;
    ch->cap = cap;
    ch->cap_explicit = given;
  }
  return ch;
}

/* luapool.channel(name [, capacity]). A channel made by a call without a
 * capacity takes the first one given; after that, all must agree. */
static int l_channel(lua_State *L) {
  lua_Integer cap = 0;
  int given = opt_int(L, 2, "luapool.channel", "capacity", &cap);
  if (given && cap <= 0)
    return luaL_error(L, "luapool.channel: capacity must be positive, not %I", cap);
  lp_chan *ch = lookup(L, "luapool.channel", 0, make_chan, cap, given);
  if (!given) return 1;
  lp_spin_lock(&ch->lock);
  lua_Integer had = ch->cap;
  int clash = ch->cap_explicit && had != cap;
  if (!clash) {
    ch->cap = cap;
    ch->cap_explicit = 1;
  }
  lp_spin_unlock(&ch->lock);
  if (clash)
    return luaL_error(L, "luapool.channel: channel '%s' has capacity %I, not %I", ch->name, had,
                      cap);
  return 1;
}

/* ---- sequencers ---- */

typedef struct tslot {
  lua_Integer ticket;
  lp_task *task; /* the waiting task; NULL: abandoned by a cancelled task */
  int used;
} tslot;

struct lp_seq {
  _Atomic int lock;   /* spinlock over every field below */
  const char *name;   /* interned */
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
  return check_self(L, what, "sequencer");
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
  hand_back(wake);
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
    hand_back(wake);
    raise_cancelled(L, self);
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
    raise_cancelled(L, self);
  }
  int oom;
  double td = add_timer(L, self, -1, &oom);
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
  if (!opt_int(L, 2, "luapool.sequencer:run", "ticket", &ticket))
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
  if (ticket < first) why = "is below the sequencer's first ticket";
  else if (ticket < next) why = "has already had its section";
  else if (ticket == next && s->holder) why = "is taken: its section is running or about to";
  else if (ticket == next) {
    s->holder = self;
    lp_spin_unlock(&s->lock);
    return run_section(L);
  } else if (s->holder == self) why = "cannot be waited for inside this task's own section";
  else if ((e = slot_find(s, ticket)) != NULL && e->task) why = "is taken by another waiting task";
  if (why) {
    lp_spin_unlock(&s->lock);
    return luaL_error(L,
                      "luapool.sequencer:run: ticket %I of sequencer '%s' %s (first %I, next %I)",
                      ticket, s->name, why, first, next);
  }
  if (lp_worker_of(L)->eng->inline_mode || L != self->co || !lua_isyieldable(L)) {
    lp_spin_unlock(&s->lock);
    check_can_wait(L, "luapool.sequencer:run", -1);
  }
  int oom;
  double td = add_timer(L, self, -1, &oom);
  if (!oom) {
    if (e) e->task = self; /* an abandoned ticket, taken up again */
    else if (slot_insert(s, ticket, self) != 0) oom = 1;
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
  lua_Integer first = 1;
  int given = opt_int(L, 2, "luapool.sequencer", "first", &first);
  lp_seq *s = lookup(L, "luapool.sequencer", 1, make_seq, first, given);
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

static void add_class(lua_State *L, int module, const char *mt, const luaL_Reg *methods,
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
  static const luaL_Reg chan_methods[] = {
      {"push", ch_push}, {"pop", ch_pop}, {"close", ch_close}, {NULL, NULL}};
  static const luaL_Reg seq_methods[] = {{"run", seq_run}, {NULL, NULL}};
  add_class(L, module, CHANNEL_MT, chan_methods, ch_tostring, "channel", l_channel);
  add_class(L, module, SEQUENCER_MT, seq_methods, seq_tostring, "sequencer", l_sequencer);
}

static void free_chan(lp_chan *ch) {
  while (ch->head) free(q_take(ch));
  wlist *lists[2] = {&ch->poppers, &ch->pushers};
  for (int i = 0; i < 2; i++)
    while (lists[i]->head) {
      wnode *n = lists[i]->head;
      wl_remove(lists[i], n);
      free(n->it);
      free(n);
    }
  free(ch);
}

void lp_sync_free(struct luapool *eng) {
  struct lp_sync *s = eng->sync;
  if (!s) return;
  for (size_t i = 0; i < s->nchans; i++)
    if (s->chans[i]) free_chan(s->chans[i]);
  for (size_t i = 0; i < s->nseqs; i++) {
    lp_seq *q = s->seqs[i];
    if (q) free(q->slots);
    free(q);
  }
  free(s->chans);
  free(s->seqs);
  pthread_mutex_destroy(&s->lock);
  free(s);
  eng->sync = NULL;
}
