/*
 * relay.c - tasks a process handed over (EXPORT, once the engine asked it
 * with HUNGRY) to run in another process: the engine holds each as a
 * foreign task (t->foreign; t->at_ref is the connection it came from),
 * sends it as it sends its own, and relays what happens to it (RESULT,
 * RECORD, DONE) back to the process it came from, where they finish the
 * task it left in its tree.
 *
 * The readers call these as frames come (the exporting process's reader
 * takes the task, the reader of the process that runs it relays its end),
 * and so does a thread that gives up a task that will not be sent. A frame
 * to relay is queued on the exporting connection's `out` under the pool's
 * lock, for its feeder to write; finish_with, which finishes the engine's
 * own tasks and relays the end of foreign ones, runs with no lock held.
 */
#include <stdatomic.h>
#include <string.h>

#include "procs.h"

/* Sends a frame about relay task t to the process that exported it, if
 * that process is still the one that did (a replaced one never knew it). */
static void relay(lp_task *t, lp_buf *frame, size_t mark) {
  lp_conn *a = t->at_ref;
  lp_wire_end(frame, mark);
  pthread_mutex_lock(&a->ps->lock);
  if (a->gen == t->at_gen && a->fd >= 0 && !a->ps->closing) {
    lp_buf_append(&a->out, frame->data, frame->len);
    poke(a);
  }
  pthread_mutex_unlock(&a->ps->lock);
  lp_buf_free(frame);
}

void lp_relay_result(lp_task *t, int state, const char *res, size_t len, const char *note,
                     size_t notelen) {
  lp_buf b;
  size_t mark;
  lp_buf_init(&b);
  if (lp_wire_begin(&b, LP_MSG_RESULT, &mark) || lp_wire_u64(&b, t->id) ||
      lp_wire_u64(&b, (uint64_t)state) || lp_wire_u64(&b, 0) || lp_wire_bytes(&b, res, len) ||
      lp_wire_bytes(&b, note, notelen)) {
    lp_buf_free(&b);
    return;
  }
  relay(t, &b, mark);
}

void lp_relay_record(lp_task *t, luapool *eng, const lp_record *r) {
  lp_buf b;
  size_t mark;
  lp_buf_init(&b);
  const char *fn = lp_names_get(&eng->names, r->fn);
  if (lp_wire_begin(&b, LP_MSG_RECORD, &mark) || lp_wire_u64(&b, t->id) ||
      lp_wire_u64(&b, (uint64_t)r->kind) || lp_wire_u64(&b, r->task) ||
      lp_wire_bytes(&b, fn, strlen(fn)) || lp_wire_f64(&b, r->priority) ||
      lp_wire_bytes(&b, r->data, r->len)) {
    lp_buf_free(&b);
    return;
  }
  relay(t, &b, mark);
}

/* The relay task's subtree has ended: DONE to its process, and the engine
 * lets it go (it never was part of the engine's own tree). */
void lp_relay_done(lp_task *t, int sent) {
  lp_buf b;
  size_t mark;
  lp_buf_init(&b);
  if (lp_wire_begin(&b, LP_MSG_DONE, &mark) == 0 && lp_wire_u64(&b, t->id) == 0)
    relay(t, &b, mark);
  else
    lp_buf_free(&b);
  t->away = 0;
  if (sent) lp_task_unref(t); /* the connection's */
  lp_task_unref(t);           /* its own */
}

/* Finishes t with the message text as its error. */
void lp_relay_finish_with(lp_task *t, lp_task_state state, const char *text) {
  lp_buf msg;
  lp_buf_init(&msg);
  if (lp_pack_begin(&msg, 1) != 0 || lp_pack_put_string(&msg, text, strlen(text)) != 0)
    lp_buf_reset(&msg);
  if (t->foreign) {
    const char *note = t->failnote ? t->failnote : "";
    lp_relay_result(t, state, msg.data, msg.len, note, strlen(note));
    atomic_store(&t->state, (int)state);
  } else {
    lp_task_finish(t, state, &msg);
  }
  lp_buf_free(&msg);
}

/* The process that handed over task `id` cancels it: so does the process
 * that runs it. */
void lp_relay_cancel_export(lp_procs *ps, uint64_t id) {
  lp_task *t = NULL;
  for (int i = 0; i < ps->n && !t; i++) {
    lp_conn *o = &ps->conns[i];
    pthread_mutex_lock(&o->mlock);
    if ((t = lp_idmap_get(&o->tasks, id)) && t->foreign)
      lp_task_ref(t);
    else
      t = NULL;
    pthread_mutex_unlock(&o->mlock);
  }
  if (!t) return; /* not sent yet (it runs, and its end is relayed), or over */
  lp_task_cancel(t);
  lp_task_unref(t);
}

/* A process hands over a task that waits there (after HUNGRY): it runs
 * in whichever process asks next, and what happens to it is relayed. */
void lp_relay_export(lp_conn *c, lp_wire_msg *m) {
  lp_procs *ps = c->ps;
  luapool *eng = ps->eng;
  uint64_t id;
  lp_wire_task wt;
  if (lp_wire_get_export(m, &id, &wt) != 0) return;
  int fid = lp_names_intern(&eng->names, wt.fn, wt.fnlen);
  lp_buf b;
  lp_buf_init(&b);
  if (fid < 0 || lp_buf_append(&b, wt.args, wt.argslen) != 0) {
    lp_buf_free(&b);
    return;
  }
  lp_task *t = lp_task_new(eng, NULL, fid, wt.priority, &b);
  if (!t) return;
  /* Counted where it was made: not a task of the engine's own. */
  atomic_fetch_sub(&eng->stats.host_created, 1);
  t->id = id;
  t->depth = wt.depth > 1000000 ? 1000000 : (int)wt.depth;
  t->timeout = wt.timeout;
  t->retries = wt.retries > 1000000 ? 1000000 : (int)wt.retries;
  t->pool = ps->pool;
  atomic_store(&t->awaited, 1); /* its process reports it if nobody waits */
  t->foreign = 1;
  t->at_ref = c;
  t->at_gen = c->gen;
  lp_procs_take(eng, t);
}
