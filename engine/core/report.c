/*
 * report.c - delivering records to the host in the order asked for.
 *
 * DESIGN. Every task has an output sequence (lp_rnode, inside the task
 * record) holding its records and, at each spawn, the place of the child.
 * Only the task's own worker appends to it, and only the host reads it, so
 * appends are a release store and need no lock. In tree order the host
 * walks the tree of sequences depth-first with one cursor: a record under
 * the cursor leaves at once; a child's place is entered; the end of a
 * sequence whose task's body has finished is left. When the cursor reaches
 * the end of a sequence still being written, everything after it must wait:
 * the only records held in memory are those that cannot leave yet.
 *
 * Sequences are nodes of their own, freed by the cursor once passed, so
 * the task records themselves never wait for the cursor. Records are freed
 * as they are delivered. In completion order each worker has one sequence and
 * records leave as the host finds them.
 *
 * Callbacks to the host (records, failures) run only on the host thread,
 * inside lp_report_deliver; a record's way into the callback, its text and
 * JSON, is record.c's.
 */
#include "report.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>

#include "engine.h"
#include "pack.h"
#include "spill.h"
#include "task.h"

static void seq_init(lp_rnode *n, lp_rnode *parent) {
  atomic_init(&n->item.next, NULL);
  n->item.kind = LP_ITEM_CHILD;
  atomic_init(&n->first, NULL);
  n->last = NULL;
  atomic_init(&n->done, 0);
  n->held = 0;
  n->parent = parent;
}

/* A new sequence for t; on failure t has none and its records are dropped
 * (out of memory: keeping the run going matters more). */
static lp_rnode *seq_new(lp_task *t, lp_rnode *parent) {
  lp_task_cache *c = lp_task_cache_self;
  lp_rnode *n = lp_fl_alloc(c ? &c->nodes : NULL, sizeof *n);
  if (n) {
    seq_init(n, parent);
    n->home = c ? &c->nodes : NULL;
  }
  t->rn = n;
  return n;
}

static void seq_append(lp_rnode *n, lp_item *it) {
  atomic_store_explicit(&it->next, NULL, memory_order_relaxed);
  if (n->last)
    atomic_store_explicit(&n->last->next, it, memory_order_release);
  else
    atomic_store_explicit(&n->first, it, memory_order_release);
  n->last = it;
}

int lp_report_init(lp_report *r, luapool *eng, int order, int nworkers) {
  memset(r, 0, sizeof *r);
  r->eng = eng;
  r->order = order;
  seq_init(&r->roots, NULL);
  r->cur = &r->roots;
  r->noutbox = nworkers + 1; /* the workers' homes, and the one of a thread outside them */
  r->bound = eng->cfg.hold ? (long long)eng->cfg.hold : (long long)LP_HOLD_DEFAULT;
  atomic_init(&r->cursor_seq, &r->roots);
  atomic_init(&r->csentinel.next, NULL);
  r->csentinel.kind = LP_ITEM_RECORD;
  atomic_init(&r->ctail, &r->csentinel);
  r->cpos = &r->csentinel;
  r->freed_home = calloc((size_t)r->noutbox, sizeof *r->freed_home);
  r->freed_first = calloc((size_t)r->noutbox, sizeof *r->freed_first);
  r->freed_last = calloc((size_t)r->noutbox, sizeof *r->freed_last);
  r->nfreed = calloc((size_t)r->noutbox, sizeof *r->nfreed);
  if (!r->freed_home || !r->freed_first || !r->freed_last || !r->nfreed) return -1;
  pthread_mutex_init(&r->fail_lock, NULL);
  pthread_mutex_init(&r->room_lock, NULL);
  pthread_cond_init(&r->room_cond, NULL);
  return 0;
}

static void add_completion(lp_report *r, lp_task *t, lp_record *rec) {
  /* The nearest task that may still run again holds it (parents live while
   * their subtree is pending, so the walk up is safe). */
  if (atomic_load_explicit(&r->holding, memory_order_relaxed))
    for (lp_task *h = t; h; h = h->parent)
      if (h->retries > 0 && lp_task_hold(h, rec)) return;
  atomic_store_explicit(&rec->item.next, NULL, memory_order_relaxed);
  lp_item *prev = atomic_exchange_explicit(&r->ctail, &rec->item, memory_order_acq_rel);
  atomic_store_explicit(&prev->next, &rec->item, memory_order_release);
}

int lp_report_add(lp_report *r, lp_task *t, lp_record *rec) {
  long long size = lp_record_bytes(rec);
  long long mem = lp_hold_count(r, size);
  if (r->order == LUAPOOL_ORDER_COMPLETION) {
    add_completion(r, t, rec);
    return lp_hold_must_wait(r, mem);
  }
  if (!t->rn) {
    lp_hold_count(r, -size);
    free(rec);
    return 0;
  }
  /* Past the bound, a record the cursor cannot reach yet waits on disk
   * (workers run their newest tasks first, so in tree order much is made
   * ahead of its turn); one in the cursor's sequence waits for the output. */
  if (mem > r->bound && t->rn != atomic_load_explicit(&r->cursor_seq, memory_order_relaxed) &&
      lp_report_spill(r, t->rn, rec) == 0)
    return 0;
  seq_append(t->rn, &rec->item);
  return lp_hold_must_wait(r, mem);
}

/* Frees a list of records linked by item.next, counting them (producer). */
static void drop_list(lp_report *r, lp_record *list) {
  long long bytes = 0;
  for (lp_record *rec = list; rec;
       rec = (lp_record *)atomic_load_explicit(&rec->item.next, memory_order_relaxed))
    bytes += lp_record_bytes(rec);
  lp_record_free_list(list);
  if (bytes) lp_hold_count(r, -bytes);
}

void lp_report_release(lp_report *r, lp_task *t, lp_record *held) {
  for (lp_record *rec = held, *next; rec; rec = next) {
    next = (lp_record *)atomic_load_explicit(&rec->item.next, memory_order_relaxed);
    add_completion(r, t->parent, rec);
  }
}

/* Makes t's sequence (t->rn) and returns what takes t's place in its
 * parent's sequence: the sequence itself or, while t may still run again,
 * a place that stays empty until the attempt's outcome is known. NULL: out
 * of memory (t's records are dropped). */
static lp_rnode *attempt_new(lp_task *t, lp_rnode *parent) {
  if (t->retries <= 0) return seq_new(t, parent);
  lp_rnode *place = seq_new(t, parent);
  if (!place) return NULL;
  lp_rnode *n = seq_new(t, place);
  if (n)
    n->held = 1;
  else
    atomic_store_explicit(&place->done, 1, memory_order_release);
  return place;
}

/* The attempt's outcome is final: it takes its place, the only item there. */
static void attempt_link(lp_rnode *n) {
  lp_rnode *place = n->parent;
  n->held = 0;
  seq_append(place, &n->item);
  atomic_store_explicit(&place->done, 1, memory_order_release);
}

/* Frees what a dropped attempt made: its records and its subtree's
 * sequences (all complete: the subtree is over), leaving n empty. */
static void attempt_clear(lp_report *r, lp_rnode *n) {
  lp_task_cache *self = lp_task_cache_self;
  lp_rnode *seq = n;
  lp_item *it = atomic_load_explicit(&n->first, memory_order_acquire);
  for (;;) {
    if (!it) {
      if (seq == n) break;
      lp_rnode *up = seq->parent;
      it = atomic_load_explicit(&seq->item.next, memory_order_acquire);
      lp_fl_free(seq->home, self ? &self->nodes : NULL, seq);
      seq = up;
      continue;
    }
    lp_item *next = atomic_load_explicit(&it->next, memory_order_acquire);
    if (it->kind == LP_ITEM_RECORD) {
      lp_hold_count(r, -lp_record_bytes((lp_record *)it));
      free(it);
      it = next;
    } else if (it->kind == LP_ITEM_SPILLED) { /* its bytes in the file are left unread */
      lp_hold_count(r, -(long long)(sizeof(lp_spilled) + 16));
      free(it);
      it = next;
    } else {
      seq = (lp_rnode *)it;
      it = atomic_load_explicit(&seq->first, memory_order_acquire);
    }
  }
  atomic_store_explicit(&n->first, NULL, memory_order_relaxed);
  n->last = NULL;
}

void lp_report_retry(lp_report *r, lp_task *t) {
  drop_list(r, lp_task_take_held(t));
  if (r->order == LUAPOOL_ORDER_COMPLETION || !t->rn || !t->rn->held) return;
  attempt_clear(r, t->rn);
  if (t->retries <= 0) attempt_link(t->rn); /* the last run streams */
}

void lp_report_spawn(lp_report *r, lp_task *parent, lp_task *child) {
  if (child->retries > 0) atomic_store_explicit(&r->holding, 1, memory_order_relaxed);
  if (r->order == LUAPOOL_ORDER_COMPLETION || !parent->rn) return;
  lp_rnode *n = attempt_new(child, parent->rn);
  if (n) seq_append(parent->rn, &n->item);
}

void lp_report_root(lp_report *r, lp_task *root) {
  if (root->retries > 0) atomic_store_explicit(&r->holding, 1, memory_order_relaxed);
  if (r->order == LUAPOOL_ORDER_COMPLETION) return;
  lp_rnode *n = attempt_new(root, NULL);
  if (n) seq_append(&r->roots, &n->item);
}

void lp_report_body_done(lp_report *r, lp_task *t) {
  if (r->order == LUAPOOL_ORDER_COMPLETION || !t->rn) return;
  if (t->rn->held) attempt_link(t->rn);
  if (t->away) return;
  /* The last touch of the node by its producer: the cursor may free it. */
  atomic_store_explicit(&t->rn->done, 1, memory_order_release);
}

void lp_report_failure(lp_report *r, const char *text) {
  size_t n = strlen(text);
  lp_failure *f = malloc(sizeof *f + n + 1);
  if (!f) {
    fprintf(stderr, "luapool: %s\n", text); /* out of memory: say it now rather than never */
    return;
  }
  memcpy(f->text, text, n + 1);
  f->next = NULL;
  pthread_mutex_lock(&r->fail_lock);
  if (r->fail_tail)
    r->fail_tail->next = f;
  else
    r->fail_head = f;
  r->fail_tail = f;
  pthread_mutex_unlock(&r->fail_lock);
}

static void deliver_failures(lp_report *r) {
  pthread_mutex_lock(&r->fail_lock);
  lp_failure *f = r->fail_head;
  r->fail_head = r->fail_tail = NULL;
  pthread_mutex_unlock(&r->fail_lock);
  while (f) {
    lp_failure *next = f->next;
    if (r->eng->cfg.on_failure)
      r->eng->cfg.on_failure(r->eng->cfg.ud, f->text);
    else
      fprintf(stderr, "%s\n", f->text);
    free(f);
    f = next;
  }
}

/* ---- the cursors ---- */

/* Nodes go back to their home lists in chains, one CAS per chain. */
static void flush_freed(lp_report *r, int i) {
  if (!r->nfreed[i]) return;
  lp_fl_free_chain(r->freed_home[i], r->freed_first[i], r->freed_last[i]);
  r->nfreed[i] = 0;
}

static void flush_all_freed(lp_report *r) {
  for (int i = 0; i < r->noutbox; i++) flush_freed(r, i);
}

/* The batch of n's home list: one per home (there are at most as many
 * homes as workers, and a home never gets two batches). */
static void free_node(lp_report *r, lp_rnode *n) {
  if (!n->home) {
    free(n);
    return;
  }
  int i = 0, empty = -1;
  for (; i < r->noutbox; i++) {
    if (r->nfreed[i] && r->freed_home[i] == n->home) break;
    if (!r->nfreed[i] && empty < 0) empty = i;
  }
  if (i == r->noutbox) {
    if (empty < 0) { /* more homes than slots: make room */
      flush_freed(r, 0);
      empty = 0;
    }
    i = empty;
    r->freed_home[i] = n->home;
    r->freed_last[i] = n;
    *(void **)n = NULL;
  } else {
    *(void **)n = r->freed_first[i];
  }
  r->freed_first[i] = n;
  if (++r->nfreed[i] == 256) flush_freed(r, i);
}

/* Frees the item the cursor leaves behind: a delivered record, or the node
 * of a sequence it has walked to the end. A held record is freed later. */
static void release_item(lp_report *r, lp_item *it) {
  if (!it) return;
  if (it->kind == LP_ITEM_CHILD) {
    free_node(r, (lp_rnode *)it);
  } else if (it->kind == LP_ITEM_SPILLED) {
    lp_hold_host(r, -(long long)(sizeof(lp_spilled) + 16));
    free(it);
  } else if (!((lp_record *)it)->held) {
    lp_hold_host(r, -lp_record_bytes((lp_record *)it));
    free(it);
  }
}

/* Walks c as far as it can. Records go to sink when one is given, else
 * they are delivered (or held, in priority order). Returns how many left,
 * or -1 once the cursor has walked out of its top sequence. */
static long walk_cursor(lp_report *r, lp_cursor *c, int deliver, lp_sink_fn sink, void *ud) {
  long n = 0;
  for (;;) {
    /* The host's cursor (a sink's walks hold nothing): priority order may
     * write a run out at any step, and must leave the cursor's position
     * to it (runs.c), not free it, nor take a stale one for it. */
    if (!sink) r->pos = c->pos;
    lp_rnode *seq = c->cur;
    lp_item *next = c->pos ? atomic_load_explicit(&c->pos->next, memory_order_acquire)
                           : atomic_load_explicit(&seq->first, memory_order_acquire);
    if (!next && seq != &r->roots && atomic_load_explicit(&seq->done, memory_order_acquire)) {
      /* Items are appended before `done` is set: read once more. */
      next = c->pos ? atomic_load_explicit(&c->pos->next, memory_order_acquire)
                    : atomic_load_explicit(&seq->first, memory_order_acquire);
      if (!next) { /* leave this sequence: resume after its place in the parent */
        release_item(r, c->pos);
        if (seq == c->top) {
          release_item(r, &seq->item);
          c->pos = NULL;
          return -1;
        }
        c->pos = &seq->item;
        c->cur = seq->parent ? seq->parent : &r->roots;
        continue;
      }
    }
    if (!next) return n;
    if (next->kind == LP_ITEM_SPILLED) {
      /* Whole once an item follows it or its sequence is done (read before
       * its length: the producer extends it no more after either). */
      int whole = atomic_load_explicit(&next->next, memory_order_acquire) ||
                  (seq != &r->roots && atomic_load_explicit(&seq->done, memory_order_acquire));
      lp_spilled *s = (lp_spilled *)next;
      int64_t len = atomic_load_explicit(&s->len, memory_order_acquire);
      if (r->closing) /* freeing what is left: its records are dropped unread */
        s->done = len;
      else
        n += lp_report_read_spilled(r, s, len, deliver, sink, ud);
      if (!whole || s->done < len) return n; /* the rest is still being written, or paused */
      release_item(r, c->pos);
      c->pos = next;
      continue;
    }
    release_item(r, c->pos);
    if (next->kind == LP_ITEM_RECORD) {
      if (sink)
        sink(ud, (lp_record *)next), n++;
      else if (r->order == LUAPOOL_ORDER_PRIORITY) {
        r->pos = next;                      /* its position from here on */
        lp_runs_hold(r, (lp_record *)next); /* holding is not delivering: also when discarding */
      } else if (deliver)
        lp_record_deliver(r, (lp_record *)next), n++;
      c->pos = next;
      if (r->paused) return n;
    } else {
      c->cur = (lp_rnode *)next;
      c->pos = NULL;
    }
  }
}

static long walk_tree(lp_report *r, int deliver) {
  lp_cursor c = {&r->roots, r->cur, r->pos};
  long n = walk_cursor(r, &c, deliver, NULL, NULL);
  r->cur = c.cur;
  r->pos = c.pos;
  atomic_store_explicit(&r->cursor_seq, c.cur, memory_order_relaxed);
  return n;
}

void lp_report_subroot(lp_report *r, lp_task *t, lp_cursor *c) {
  c->top = c->cur = r->order == LUAPOOL_ORDER_COMPLETION ? NULL : seq_new(t, NULL);
  c->pos = NULL;
}

int lp_report_walk_sub(lp_report *r, lp_cursor *c, lp_sink_fn sink, void *ud) {
  if (!c->top) return 1;
  if (walk_cursor(r, c, 0, sink, ud) >= 0) return 0;
  c->top = NULL;
  return 1;
}

void lp_report_flush_nodes(lp_report *r) { flush_all_freed(r); }

void lp_report_pass_end(lp_report *r) {
  lp_hold_publish(r);
  atomic_store_explicit(&r->floor, atomic_load_explicit(&r->mem, memory_order_relaxed),
                        memory_order_relaxed);
  lp_hold_wake(r); /* all that could leave has: what stays waits for its turn */
}

void lp_report_away_done(lp_report *r, lp_task *t) {
  if (r->order == LUAPOOL_ORDER_COMPLETION || !t->rn) return;
  atomic_store_explicit(&t->rn->done, 1, memory_order_release);
}

/* Completion order. Between a producer's exchange and its link the queue
 * looks shorter than it is; the next pass picks the rest up. */
static long walk_completion(lp_report *r, int deliver, lp_sink_fn sink, void *ud) {
  long n = 0;
  lp_item *next;
  while ((next = atomic_load_explicit(&r->cpos->next, memory_order_acquire))) {
    if (sink)
      sink(ud, (lp_record *)next);
    else if (deliver)
      lp_record_deliver(r, (lp_record *)next);
    n++;
    if (r->cpos != &r->csentinel) release_item(r, r->cpos);
    r->cpos = next;
    if (r->paused) break;
  }
  return n;
}

int lp_report_walk_made(lp_report *r, lp_sink_fn sink, void *ud) {
  /* The queue is in exchange order: once past the tail read here, the walk
   * has had every record whose exchange happened before this call. Records
   * added meanwhile do not hold the answer back. */
  lp_item *upto = atomic_load_explicit(&r->ctail, memory_order_acquire), *next;
  int all = r->cpos == upto;
  while ((next = atomic_load_explicit(&r->cpos->next, memory_order_acquire))) {
    sink(ud, (lp_record *)next);
    if (r->cpos != &r->csentinel) release_item(r, r->cpos);
    r->cpos = next;
    all |= next == upto;
  }
  return all;
}

long lp_report_deliver(lp_report *r, int final) {
  deliver_failures(r);
  r->paused = 0;
  long n =
      r->order == LUAPOOL_ORDER_COMPLETION ? walk_completion(r, 1, NULL, NULL) : walk_tree(r, 1);
  if (final && r->order != LUAPOOL_ORDER_COMPLETION && !r->paused) {
    /* Every task has ended: the cursor is at the end of the roots, or
     * records would be dropped unseen. Said loudly if it ever happens. */
    lp_item *next = r->pos ? atomic_load_explicit(&r->pos->next, memory_order_acquire)
                           : atomic_load_explicit(&r->roots.first, memory_order_acquire);
    if (r->cur != &r->roots || next)
      lp_spill_fail(r, "internal error: the report stopped short of its end, reading", EIO);
  }
  if (final && r->order == LUAPOOL_ORDER_PRIORITY) n += lp_runs_release(r, 1);
  flush_all_freed(r);
  lp_report_pass_end(r);
  deliver_failures(r);
  if (n > 0 && r->eng->cfg.on_flush) r->eng->cfg.on_flush(r->eng->cfg.ud);
  return n;
}

void lp_report_free(lp_report *r) {
  if (!r->eng) return;
  r->closing = 1;
  if (r->order == LUAPOOL_ORDER_COMPLETION) {
    walk_completion(r, 0, NULL, NULL);
    if (r->cpos != &r->csentinel) release_item(r, r->cpos);
  } else {
    /* Every task has finished by now, so the walk reaches the end; it stops
     * early only in the roots' sequence, which is never `done`. */
    walk_tree(r, 0);
    lp_runs_release(r, 0); /* before the position: it may be a held record */
    if (r->pos && r->pos != &r->roots.item) release_item(r, r->pos);
    flush_all_freed(r);
  }
  free(r->held);
  free(r->runs);
  lp_hold_wake(r);
  free(r->waiting);
  if (r->rd) lp_spill_reader_free(r->rd);
  free(r->rd);
  free(r->scratch);
  lp_spill_close_all(r);
  free(r->spill_error);
  deliver_failures(r);
  free(r->freed_home);
  free(r->freed_first);
  free(r->freed_last);
  free(r->nfreed);
  if (r->fmt) lua_close(r->fmt);
  free(r->textbuf);
  pthread_mutex_destroy(&r->fail_lock);
  pthread_mutex_destroy(&r->room_lock);
  pthread_cond_destroy(&r->room_cond);
  memset(r, 0, sizeof *r);
}
