/*
 * channel.c - named channels shared by every task of a run:
 * luapool.channel(name [, capacity]) and its push, pop and close, a FIFO of
 * packed values that tasks on any worker pass to each other. Finding a
 * channel by name is the registry's job (sync.c).
 *
 * DESIGN. Each channel has a spinlock guarding all of its fields. Any
 * worker thread takes it, for a few pointer moves: packing, unpacking and
 * Lua never run under it (only the rare growth of the worker's own timer
 * heap allocates there). No other lock nests with it: tasks are handed back
 * to the scheduler after unlocking, and the registry mutex is released
 * before a channel's spinlock is taken.
 *
 * Waiting follows lib.h. A task that must wait links a node under the
 * lock, registers its timer, arms itself, unlocks and yields. A waker
 * unlinks the node, records the outcome in it and calls lp_task_disarm
 * under the same lock; only when that succeeds does it hand the task back
 * (lp_sched_resume), after unlocking. So a task whose node a waker took
 * stays suspended until that waker resumes it, and a waker never touches a
 * task that has moved on. A task resumed by anyone else (its timeout, a
 * cancel) finds its node still linked and unlinks it itself. Waiters are
 * woken one per item or slot, in FIFO order: no thundering herd.
 *
 * Ownership. A channel owns its queued items and its linked waiter nodes
 * (a waiting pusher's node holds its packed item). A node unlinked by a
 * waker belongs to its task, which frees it, and any item in it, when it
 * resumes; a node a task unlinks itself is freed by that task. Popped items
 * are freed once unpacked into the popping state. lp_channel_free frees
 * what is left at engine close: queued items and nodes still linked.
 */
#include "sync_int.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "lib.h"
#include "pack.h"
#include "pool.h"
#include "spin.h"
#include "timer.h"
#include "vm.h"

#define CHANNEL_MT "luapool.channel"

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
  if (l->tail)
    l->tail->next = n;
  else
    l->head = n;
  l->tail = n;
}

static void wl_remove(wlist *l, wnode *n) {
  if (n->prev)
    n->prev->next = n->next;
  else
    l->head = n->next;
  if (n->next)
    n->next->prev = n->prev;
  else
    l->tail = n->prev;
  n->next = n->prev = NULL;
}

static void q_append(lp_chan *ch, item *it) {
  it->next = NULL;
  if (ch->tail)
    ch->tail->next = it;
  else
    ch->head = it;
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
  return lp_sync_check_self(L, what, "channel");
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
        return lp_sync_raise_cancelled(L, self);
      }
    } else if (!it) { /* it is NULL only for a resumed node, never W_IDLE */
      lp_spin_unlock(&ch->lock);
      return luaL_error(L, "luapool.channel:push: the wait lost its item (internal error)");
    } else if (ch->closed) {
      lp_spin_unlock(&ch->lock);
      free(n);
      free(it);
      return closed_error(L, ch);
    } else if (ch->poppers.head) {
      wake = end_wait(&ch->poppers, W_DONE, it);
      lp_spin_unlock(&ch->lock);
      lp_sync_hand_back(wake);
      free(n);
      return 0;
    } else if (ch->cap == 0 || ch->count < ch->cap) {
      q_append(ch, it);
      lp_spin_unlock(&ch->lock);
      free(n);
      return 0;
    } else if (!n) { /* full: get ready to wait, then look again */
      lp_spin_unlock(&ch->lock);
      if (!lp_sync_can_wait(L, -1)) { /* then the check raises: free the item first */
        free(it);
        lp_sync_check_can_wait(L, "luapool.channel:push", -1);
        return 0; /* not reached */
      }
      self = lp_worker_of(L)->current;
      if (lp_task_cancelled(self)) {
        free(it);
        return lp_sync_raise_cancelled(L, self);
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
    double td = lp_sync_add_timer(L, self, -1, &oom);
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
      lp_sync_hand_back(wake);
      free(n);
      return deliver(L, it);
    }
    int closed = ch->closed, timeout = deadline >= 0 && lp_now() >= deadline;
    int cancelled = n && n->state == W_WAITING && lp_task_cancelled(self);
    if (closed || timeout || cancelled) {
      if (n && n->state == W_WAITING) wl_remove(&ch->poppers, n);
      lp_spin_unlock(&ch->lock);
      free(n);
      if (cancelled) return lp_sync_raise_cancelled(L, self);
      lua_pushnil(L);
      lua_pushstring(L, closed ? "closed" : "timeout");
      return 2;
    }
    if (!n) { /* empty: get ready to wait, then look again */
      lp_spin_unlock(&ch->lock);
      self = lp_sync_check_can_wait(L, "luapool.channel:pop", deadline);
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
    double td = lp_sync_add_timer(L, self, deadline, &oom);
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
    lp_sync_hand_back(wake->task); /* may free the node */
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
  lp_lib_not_in_process(L, "luapool.channel");
  lua_Integer cap = 0;
  int given = lp_sync_opt_int(L, 2, "luapool.channel", "capacity", &cap);
  if (given && cap <= 0)
    return luaL_error(L, "luapool.channel: capacity must be positive, not %I", cap);
  lp_chan *ch = lp_sync_lookup(L, "luapool.channel", LP_SYNC_CHANNEL, make_chan, cap, given);
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

/* ---- registration and clean-up ---- */

void lp_channel_open(lua_State *L, int module) {
  static const luaL_Reg methods[] = {
      {"push", ch_push}, {"pop", ch_pop}, {"close", ch_close}, {NULL, NULL}};
  lp_sync_add_class(L, module, CHANNEL_MT, methods, ch_tostring, "channel", l_channel);
}

void lp_channel_free(lp_chan *ch) {
  if (!ch) return;
  while (ch->head) free(q_take(ch));
  wlist *lists[2] = {&ch->poppers, &ch->pushers};
  for (int i = 0; i < 2; i++)
    for (wnode *n = lists[i]->head, *next; n; n = next) {
      next = n->next;
      free(n->it);
      free(n);
    }
  free(ch);
}
