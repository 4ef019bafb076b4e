/*
 * link_in.c - the frames the engine sends a worker process: EXEC (a new
 * root), CANCEL, STOP, REPLY (a counter's answer), HUNGRY (hand tasks
 * over to run in another process), and what the engine relays back of the
 * tasks handed over (RESULT, RECORD, DONE).
 *
 * All of it runs on the link (the main thread). The roots received are
 * handed to the worker threads in one go after each read (hand_over).
 */
#include <stdlib.h>
#include <string.h>

#include "link.h"
#include "pool.h"

static int on_exec(lp_link *k, lp_wire_msg *m) {
  uint64_t id, depth;
  double prio, timeout;
  const char *fn, *args;
  size_t fnlen, argslen;
  if (lp_wire_get_u64(m, &id) || lp_wire_get_bytes(m, &fn, &fnlen) || lp_wire_get_u64(m, &depth) ||
      lp_wire_get_f64(m, &prio) || lp_wire_get_f64(m, &timeout) ||
      lp_wire_get_bytes(m, &args, &argslen))
    return -1;
  luapool *eng = k->eng;
  int fid = lp_names_intern(&eng->names, fn, fnlen);
  lp_buf b;
  lp_buf_init(&b);
  lp_exec *x = k->spare;
  if (x)
    k->spare = x->next;
  else
    x = malloc(sizeof *x);
  if (fid < 0 || !x || lp_buf_append(&b, args, argslen) != 0) {
    free(x);
    lp_buf_free(&b);
    return -1;
  }
  memset(x, 0, sizeof *x);
  lp_task *t = lp_task_new(eng, NULL, fid, prio, &b);
  if (!t) {
    free(x);
    return -1;
  }
  t->id = id;
  t->depth = depth > 1000000 ? 1000000 : (int)depth;
  t->timeout = timeout > 0 ? timeout : 0;
  atomic_store(&t->awaited, 1); /* the engine reports it if nobody waits */
  t->at_ref = x;
  x->t = t;
  x->id = id;
  x->w.fire = lp_link_exec_finished;
  lp_task_ref(t); /* the exec's, until DONE has been sent */
  lp_task_watch(t, &x->w);
  lp_report_subroot(&eng->report, t, &x->cur);
  x->next = k->active;
  if (k->active) k->active->prev = x;
  k->active = x;
  if (!k->received++) lp_stats_start(eng); /* busy shares count from here */
  t->qnext = NULL;
  if (k->inj_tail)
    k->inj_tail->qnext = t;
  else
    k->inj_head = t;
  k->inj_tail = t;
  k->ninj++;
  return 0;
}

/* Hands the tasks received to the workers, in one go. */
static void hand_over(lp_link *k) {
  if (!k->ninj) return;
  luapool *eng = k->eng;
  lp_engine_add_roots(eng, k->ninj);
  lp_sched_inject_list(&eng->sched, k->inj_head, k->inj_tail, k->ninj);
  k->inj_head = k->inj_tail = NULL;
  k->ninj = 0;
}

static void on_cancel(lp_link *k, uint64_t id) {
  for (lp_exec *x = k->active; x; x = x->next)
    if (x->id == id) lp_task_cancel(x->t);
}

/* ---- tasks run by other processes ---- */

/* HUNGRY: another process is idle. Up to n tasks that wait here and have
 * not begun go to the engine (EXPORT) to run there. Each stays in its tree
 * as a proxy: the RESULT, RECORD and DONE frames the engine relays back
 * finish it, as the engine itself finishes the tasks it sends. */
static void on_hungry(lp_link *k, uint64_t n) {
  luapool *eng = k->eng;
  lp_task *out[64];
  int got = k->stopping ? 0 : lp_sched_export(&eng->sched, out, n < 64 ? (int)n : 64);
  for (int i = 0; i < got; i++) {
    lp_task *t = out[i];
    const char *fn = lp_names_get(&eng->names, t->fn);
    /* A task the engine sent stays: the engine has its own queue for those. */
    if (!t->parent || atomic_load(&t->state) != LP_TASK_QUEUED ||
        lp_idmap_put(&k->exported, t) != 0) {
      lp_sched_inject(&eng->sched, t); /* it runs here after all */
      continue;
    }
    lp_wire_task wt = {fn,           strlen(fn), (uint64_t)t->depth,
                       t->priority,  t->timeout, (uint64_t)(t->retries > 0 ? t->retries : 0),
                       t->args.data, t->args.len};
    if (lp_wire_put_export(&k->wbuf, t->id, &wt) != 0) {
      lp_idmap_take(&k->exported, t->id);
      lp_sched_inject(&eng->sched, t);
      continue;
    }
    t->retries = 0;        /* the engine runs it again if it fails there */
    lp_task_ref(t);        /* the link's, until DONE */
    lp_task_away_begin(t); /* its subtree there counts here until DONE */
  }
}

static void relayed_done(lp_link *k, lp_task *t) {
  lp_task_away_done(t, 0);
  lp_task_unref(t);
}

static int on_relayed(lp_link *k, lp_wire_msg *m) {
  luapool *eng = k->eng;
  uint64_t id, state, done, kind, task;
  const char *res, *note, *fn;
  size_t len, notelen, fnlen;
  double prio;
  lp_task *t;
  switch (m->type) {
    case LP_MSG_RESULT:
      if (lp_wire_get_u64(m, &id) || lp_wire_get_u64(m, &state) || lp_wire_get_u64(m, &done) ||
          lp_wire_get_bytes(m, &res, &len) || lp_wire_get_bytes(m, &note, &notelen) ||
          state < LP_TASK_OK || state > LP_TASK_CANCELLED)
        return -1;
      t = done ? lp_idmap_take(&k->exported, id) : lp_idmap_get(&k->exported, id);
      if (!t) return 0;
      if (!lp_task_finished(t))
        lp_task_finish_away(t, (lp_task_state)state, res, len, note, notelen);
      if (done) relayed_done(k, t);
      return 0;
    case LP_MSG_RECORD: {
      if (lp_wire_get_u64(m, &id) || lp_wire_get_u64(m, &kind) || lp_wire_get_u64(m, &task) ||
          lp_wire_get_bytes(m, &fn, &fnlen) || lp_wire_get_f64(m, &prio) ||
          lp_wire_get_bytes(m, &res, &len) || kind > LUAPOOL_RECORD_PRINT)
        return -1;
      if (!(t = lp_idmap_get(&k->exported, id))) return 0;
      /* Made for t, the proxy: the record takes the id of the task sent
       * here that t descends from, which completion order sends it under. */
      lp_record *rec = lp_record_new((int)kind, t, prio, res, len);
      if (!rec) return 0;
      rec->task = task;
      rec->fn = lp_names_intern(&eng->names, fn, fnlen);
      lp_report_add(&eng->report, t, rec);
      return 0;
    }
    case LP_MSG_DONE:
      if (lp_wire_get_u64(m, &id)) return -1;
      if ((t = lp_idmap_take(&k->exported, id))) relayed_done(k, t);
      return 0;
    default: return -1;
  }
}

/* Handles every whole frame in rbuf. -1: a malformed frame. */
int lp_link_read_frames(lp_link *k) {
  size_t off = 0;
  for (;;) {
    lp_wire_msg m;
    long n = lp_wire_frame(k->rbuf.data + off, k->rbuf.len - off, &m);
    if (n == 0) break;
    if (n < 0) return -1;
    off += (size_t)n;
    uint64_t v;
    switch (m.type) {
      case LP_MSG_EXEC:
        if (on_exec(k, &m) != 0) return -1;
        break;
      case LP_MSG_CANCEL:
        if (lp_wire_get_u64(&m, &v) != 0) return -1;
        on_cancel(k, v);
        break;
      case LP_MSG_STOP:
        k->stopping = 1;
        lp_engine_cancel(k->eng);
        break;
      case LP_MSG_REPLY: {
        uint64_t value;
        if (lp_wire_get_u64(&m, &v) != 0 || lp_wire_get_u64(&m, &value) != 0) return -1;
        lp_link_reply(k, v, (int64_t)value);
        break;
      }
      case LP_MSG_HUNGRY:
        if (lp_wire_get_u64(&m, &v) != 0) return -1;
        on_hungry(k, v);
        break;
      case LP_MSG_RESULT:
      case LP_MSG_RECORD:
      case LP_MSG_DONE:
        if (on_relayed(k, &m) != 0) return -1;
        break;
      default: return -1;
    }
  }
  memmove(k->rbuf.data, k->rbuf.data + off, k->rbuf.len - off);
  k->rbuf.len -= off;
  hand_over(k);
  return 0;
}
