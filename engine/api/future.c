/*
 * future.c - futures: the host's handle on a root it submitted, shared by
 * the public C API (luapool_future_*) and the Lua host module (luamod.c).
 *
 * Host thread only. A future holds a reference on its root task and sits
 * in its engine's list of futures; the root wakes the host's wait when it
 * finishes (lp_engine_submit). At close each live future copies its
 * outcome and drops the reference (lp_future_detach_all), so a future
 * outlives its engine safely.
 */
#include "future.h"

#include <stdio.h>
#include <stdlib.h>

#include "engine.h"

struct luapool_future {
  luapool *eng;  /* NULL once detached (the engine has closed) */
  lp_task *task; /* a reference, while attached */
  uint64_t id;
  struct luapool_future *prev, *next; /* the engine's list of live futures */
  int state;                          /* a detached future's outcome (LP_TASK_*) */
  lp_buf result;                      /* and its packed values or message */
  int cancelled;                      /* cancelled by luapool_future_cancel: result holds why */
  lp_buf text;                        /* luapool_future_text, made on first use (NUL-terminated) */
  int has_text;
};

int lp_future_submit(luapool *lp, const char *fn, lp_buf *args, const luapool_task_opts *opts,
                     luapool_future **out) {
  if (!out) return lp_engine_submit(lp, fn, args, opts, NULL);
  *out = NULL;
  luapool_future *f = calloc(1, sizeof *f);
  if (!f) {
    lp_buf_free(args);
    return lp_engine_error(lp, LUAPOOL_ENOMEM, "out of memory");
  }
  int rc = lp_engine_submit(lp, fn, args, opts, &f->task);
  if (rc != 0) {
    free(f);
    return rc;
  }
  f->eng = lp;
  f->id = f->task->id;
  lp_buf_init(&f->result);
  lp_buf_init(&f->text);
  f->next = lp->futures;
  if (f->next) f->next->prev = f;
  lp->futures = f;
  *out = f;
  return 0;
}

/* The outcome of a finished future: LP_TASK_* state and its packed bytes.
 * Returns 0 while the task has not finished. */
static int outcome(const luapool_future *f, const lp_buf **bytes) {
  if (f->cancelled) {
    *bytes = &f->result;
    return LP_TASK_CANCELLED;
  }
  if (f->task) {
    if (!lp_task_finished(f->task)) return 0;
    *bytes = &f->task->result;
    return atomic_load_explicit(&f->task->state, memory_order_acquire);
  }
  *bytes = &f->result;
  return f->state;
}

static void unlink_future(luapool_future *f) {
  if (f->prev)
    f->prev->next = f->next;
  else
    f->eng->futures = f->next;
  if (f->next) f->next->prev = f->prev;
  f->prev = f->next = NULL;
}

static void make_text(luapool_future *f);

/* The engine closes: f keeps a copy of its outcome and lets go of the task. */
static void detach(luapool_future *f) {
  const lp_buf *bytes;
  int state = outcome(f, &bytes);
  if (f->cancelled) {
    /* its outcome is already its own */
  } else if (state == 0) {
    static const char msg[] = "the engine closed before the task finished";
    state = LP_TASK_CANCELLED;
    lp_buf_reset(&f->result);
    if (lp_pack_begin(&f->result, 1) != 0 ||
        lp_pack_put_string(&f->result, msg, sizeof msg - 1) != 0)
      lp_buf_reset(&f->result);
  } else {
    make_text(f); /* the engine's formatting state goes with it */
    if (lp_buf_append(&f->result, bytes->data, bytes->len) != 0) lp_buf_reset(&f->result);
  }
  f->state = state;
  unlink_future(f);
  lp_task_unref(f->task);
  f->task = NULL;
  f->eng = NULL;
}

void lp_future_detach_all(luapool *eng) {
  while (eng->futures) detach(eng->futures);
}

int luapool_future_done(const luapool_future *f) {
  const lp_buf *bytes;
  return f && outcome(f, &bytes) != 0;
}

uint64_t luapool_future_id(const luapool_future *f) { return f ? f->id : 0; }

int luapool_future_cancel(luapool_future *f) {
  if (!f || !f->task || f->cancelled || !lp_task_cancel(f->task)) return 0;
  /* Done now, as a cancelled future is: waiting for a suspended body to
   * unwind, or a queued one to be taken off its queue, would make the
   * caller wait on a task it has given up. */
  char text[320];
  int n = snprintf(text, sizeof text, "task '%s' (id %llu) was cancelled",
                   lp_names_get(&f->eng->names, f->task->fn), (unsigned long long)f->id);
  lp_buf_reset(&f->result);
  if (lp_pack_begin(&f->result, 1) != 0 || lp_pack_put_string(&f->result, text, (size_t)n) != 0)
    lp_buf_reset(&f->result);
  f->has_text = 0;
  f->cancelled = 1;
  return 1;
}

/* Futures waited for by lp_engine_wait: done when one of them is. */
typedef struct some {
  luapool_future *const *fs;
  int n;
} some;

static int any_done(void *ud) {
  const some *s = ud;
  for (int i = 0; i < s->n; i++)
    if (luapool_future_done(s->fs[i])) return 1;
  return 0;
}

int luapool_future_wait(luapool_future *f, double timeout) {
  if (!f) return LUAPOOL_EINVAL;
  const lp_buf *bytes;
  int state = outcome(f, &bytes);
  if (state == 0) {
    some one = {&f, 1};
    int rc = lp_engine_wait(f->eng, timeout, any_done, &one);
    if (rc == LUAPOOL_EDEADLOCK) return rc;
    state = outcome(f, &bytes);
    if (state == 0) return rc == 0 || rc == LUAPOOL_ETASKFAIL ? LUAPOOL_EDEADLOCK : rc;
  }
  if (state == LP_TASK_OK) return 0;
  if (state == LP_TASK_CANCELLED) return LUAPOOL_ECANCELLED;
  if (f->task) atomic_store(&f->task->awaited, 1);
  return LUAPOOL_ETASKFAIL;
}

int lp_future_wait_any(luapool *lp, luapool_future *const *fs, int n, double timeout) {
  if (!lp_engine_is_open(lp) || n < 1) return LUAPOOL_EINVAL;
  some s = {fs, n};
  if (any_done(&s)) return 0;
  int rc = lp_engine_wait(lp, timeout, any_done, &s);
  return any_done(&s) ? 0 : rc == 0 || rc == LUAPOOL_ETASKFAIL ? LUAPOOL_EDEADLOCK : rc;
}

int luapool_future_result(luapool_future *f, const char **packed, size_t *len) {
  if (!f || !packed || !len) return LUAPOOL_EINVAL;
  const lp_buf *bytes;
  if (outcome(f, &bytes) != LP_TASK_OK) return LUAPOOL_ESTATE;
  *packed = bytes->data;
  *len = bytes->len;
  return lp_pack_count(bytes->data, bytes->len);
}

static void make_text(luapool_future *f) {
  const lp_buf *bytes;
  int state = outcome(f, &bytes);
  if (f->has_text || state == 0) return;
  lp_buf_reset(&f->text);
  const char *s;
  size_t len;
  int rc;
  if (state == LP_TASK_OK && f->eng)
    rc = lp_record_text(&f->eng->report, bytes->data, bytes->len, &f->text);
  else if (lp_pack_single_string(bytes->data, bytes->len, &s, &len))
    rc = lp_buf_append(&f->text, s, len);
  else
    rc = lp_buf_append(&f->text, "task failed", 11);
  if (rc != 0 || lp_buf_append(&f->text, "", 1) != 0) {
    lp_buf_reset(&f->text);
    return;
  }
  f->text.len--; /* the NUL is not part of the text */
  f->has_text = 1;
}

const char *luapool_future_text(luapool_future *f, size_t *len) {
  if (!f) return NULL;
  make_text(f);
  if (!f->has_text) return NULL;
  if (len) *len = f->text.len;
  return f->text.data;
}

void luapool_future_free(luapool_future *f) {
  if (!f) return;
  if (f->task) {
    unlink_future(f);
    lp_task_unref(f->task);
  }
  lp_buf_free(&f->result);
  lp_buf_free(&f->text);
  free(f);
}
