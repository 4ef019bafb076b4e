/*
 * wslot.c - one worker process of a run, on a broker's worker: its start
 * (the INIT a `--processes` engine would send), the EXECs of tasks read
 * from the run's stream, and what it answers: RECORD, RESULT and DONE
 * gather into the task's outcome, committed at DONE (worker.c); COUNTER
 * goes to the run's counters in Redis; EXPORT puts a task on the run's
 * stream; FAILURE goes to the run's list of failures.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "task.h"
#include "timer.h"
#include "wire.h"
#include "proc.h"
#include "worker.h"

extern char **environ;

void lp_wexec_free(lp_wexec *x) {
  free(x->key);
  free(x->owner);
  free(x->x);
  lp_buf_free(&x->out);
  lp_buf_free(&x->result);
  free(x);
}

int lp_wslot_start(lp_worker *w, lp_wslot *s) {
  lp_wrun *run = s->run;
  s->gen++;
  /* Ids unique over the run's processes and their successors: the
   * broker's keys of the tasks they hand over are made of them. */
  lp_wire_init f = {
      .slot = (uint64_t)s->index,
      .threads = (uint64_t)w->threads,
      .order = (uint64_t)run->order,
      .memory_limit = run->memory_limit,
      .id_base = (uint64_t)(s->index + 1) << 40 | (uint64_t)s->gen << 32,
      .task_timeout = run->timeout,
      .chunkname = run->chunkname,
      .chunkname_len = strlen(run->chunkname),
      .script = run->script,
      .script_len = run->script_len,
      .pool = "main",
      .pool_len = 4,
      .retries = (uint64_t)run->retries,
  };
  lp_buf init;
  lp_buf_init(&init);
  int rc =
      lp_wire_put_init(&init, &f) != 0 || lp_process_start(w->exe, &init, &s->pid, &s->fd) != 0;
  lp_buf_free(&init);
  if (rc) {
    s->fd = -1;
    s->pid = 0;
    return -1;
  }
  s->ready = 0;
  s->credits = 0;
  s->ran = s->failed = s->made = s->fin = 0;
  s->queued = s->running = 0;
  lp_buf_reset(&s->rbuf);
  lp_buf_reset(&s->wbuf);
  s->wpos = 0;
  return 0;
}

/* Closing its socket's writing half ends the process's loop: it closes
 * its engine, which may still report failures nobody awaited (FAILURE),
 * and leaves. Those are read to the end, for two seconds at most. */
void lp_wslot_end(lp_worker *w, lp_wslot *s) {
  if (s->fd >= 0) {
    lp_wslot_flush(s);
    shutdown(s->fd, SHUT_WR);
    double until = lp_now() + 2.0;
    while (lp_now() < until) {
      struct pollfd p = {s->fd, POLLIN, 0};
      if (poll(&p, 1, 50) > 0 && lp_wslot_read(w, s) != 0) break;
    }
    close(s->fd);
    s->fd = -1;
  }
  if (s->pid > 0) {
    int status;
    for (int i = 0; i < 100 && waitpid(s->pid, &status, WNOHANG) == 0; i++) usleep(2000);
    if (waitpid(s->pid, &status, WNOHANG) == 0) {
      kill(s->pid, SIGKILL);
      waitpid(s->pid, &status, 0);
    }
    s->pid = 0;
  }
}

int lp_wslot_flush(lp_wslot *s) {
  if (s->fd < 0 || s->wpos >= s->wbuf.len) return 0;
  if (lp_wire_write_all(s->fd, s->wbuf.data + s->wpos, s->wbuf.len - s->wpos) != 0) return -1;
  lp_buf_reset(&s->wbuf);
  s->wpos = 0;
  return 0;
}

static const char *field(redisReply *f, const char *name, size_t *len) {
  for (size_t i = 0; f && f->type == REDIS_REPLY_ARRAY && i + 1 < f->elements; i += 2)
    if (f->element[i]->type == REDIS_REPLY_STRING && strcmp(f->element[i]->str, name) == 0 &&
        f->element[i + 1]->type == REDIS_REPLY_STRING) {
      if (len) *len = f->element[i + 1]->len;
      return f->element[i + 1]->str;
    }
  return NULL;
}

static int put_exec(lp_wslot *s, lp_wexec *x, const lp_wire_task *t) {
  size_t mark;
  if (lp_wire_begin(&s->wbuf, LP_MSG_EXEC, &mark) || lp_wire_u64(&s->wbuf, x->id) ||
      lp_wire_bytes(&s->wbuf, t->fn, t->fnlen) || lp_wire_u64(&s->wbuf, t->depth) ||
      lp_wire_f64(&s->wbuf, t->priority) || lp_wire_f64(&s->wbuf, t->timeout) ||
      lp_wire_bytes(&s->wbuf, t->args, t->argslen))
    return -1;
  lp_wire_end(&s->wbuf, mark);
  return 0;
}

/* An outcome with only a RESULT: the task failed with `text`. */
static void fail_exec(lp_worker *w, lp_wslot *s, lp_wexec *x, const char *text) {
  lp_buf_reset(&x->out);
  lp_buf_reset(&x->result);
  lp_buf msg;
  lp_buf_init(&msg);
  size_t mark;
  if (lp_broker_text(&msg, text) != 0 || lp_wire_begin(&x->result, LP_MSG_RESULT, &mark) ||
      lp_wire_u64(&x->result, x->id) || lp_wire_u64(&x->result, LP_TASK_FAILED) ||
      lp_wire_u64(&x->result, 1) || lp_wire_bytes(&x->result, msg.data, msg.len) ||
      lp_wire_bytes(&x->result, "", 0)) {
    lp_buf_free(&msg);
    lp_wexec_free(x); /* out of memory: its lease lapses, another worker tries */
    return;
  }
  lp_buf_free(&msg);
  lp_wire_end(&x->result, mark);
  x->failed = 1;
  lp_worker_commit(w, s, x);
}

int lp_wslot_exec(lp_worker *w, lp_wslot *s, const char *msgid, const char *fence,
                  redisReply *fields) {
  size_t xlen = 0;
  const char *key = field(fields, "k", NULL), *owner = field(fields, "o", NULL);
  const char *xb = field(fields, "x", &xlen);
  lp_wexec *x = calloc(1, sizeof *x);
  if (!x) return -1;
  lp_buf_init(&x->out);
  lp_buf_init(&x->result);
  x->id = ++s->run->next_id;
  snprintf(x->msgid, sizeof x->msgid, "%s", msgid);
  snprintf(x->fence, sizeof x->fence, "%s", fence);
  x->key = strdup(key ? key : "?");
  x->owner = strdup(owner ? owner : "?");
  x->x = xb ? malloc(xlen ? xlen : 1) : NULL;
  if (x->x) {
    memcpy(x->x, xb, xlen);
    x->xlen = xlen;
  }
  lp_wire_task t;
  if (!key || !owner || !x->x || !x->key || !x->owner ||
      lp_broker_task_get(x->x, x->xlen, &t) != 0) {
    /* Written by hand, or damaged: this task fails, nothing else does. Its
     * commit frees it: it never joins the slot's execs (nothing runs it). */
    fail_exec(w, s, x, "task failed: its entry in the broker's stream is malformed");
    return 0;
  }
  x->next = s->execs;
  s->execs = x;
  s->nexecs++;
  x->retries = t.retries > 1000000 ? 1000000 : (int)t.retries;
  if (s->credits > 0) s->credits--;
  return put_exec(s, x, &t);
}

static lp_wexec *find(lp_wslot *s, uint64_t id, int take) {
  for (lp_wexec **p = &s->execs; *p; p = &(*p)->next)
    if ((*p)->id == id) {
      lp_wexec *x = *p;
      if (take) {
        *p = x->next;
        s->nexecs--;
      }
      return x;
    }
  return NULL;
}

/* Its subtree has ended: commit, or run it again. */
static void subtree_over(lp_worker *w, lp_wslot *s, lp_wexec *x) {
  if (x->again) {
    lp_wire_task t;
    x->again = 0;
    x->started = 0;
    lp_buf_reset(&x->out); /* the failed attempt's records go */
    lp_buf_reset(&x->result);
    if (lp_broker_task_get(x->x, x->xlen, &t) == 0 && put_exec(s, x, &t) == 0) {
      x->next = s->execs;
      s->execs = x;
      s->nexecs++;
      return;
    }
  }
  if (x->lost) {
    lp_wexec_free(x);
    return;
  }
  lp_worker_commit(w, s, x);
}

static void on_counter(lp_worker *w, lp_wslot *s, lp_wire_msg *m) {
  uint64_t req, delta, add;
  const char *name;
  size_t n;
  if (lp_wire_get_u64(m, &req) || lp_wire_get_bytes(m, &name, &n) || lp_wire_get_u64(m, &delta) ||
      lp_wire_get_u64(m, &add))
    return;
  char d[32];
  snprintf(d, sizeof d, "%lld", (long long)(int64_t)delta);
  const char *argv[] = {add ? "HINCRBY" : "HGET", s->run->k.ctr, name, d};
  size_t lens[] = {strlen(argv[0]), strlen(s->run->k.ctr), n, strlen(d)};
  /* The task waits for the answer: it is had, whatever the wait. */
  redisReply *r;
  while (!(r = lp_redis_cmd(&w->r, add ? 4 : 3, argv, lens)))
    while (lp_worker_reconnect(w) != 0) usleep(50000);
  int64_t value = 0;
  if (r && r->type == REDIS_REPLY_INTEGER) value = r->integer;
  if (r && r->type == REDIS_REPLY_STRING) value = strtoll(r->str, NULL, 10);
  if (r) freeReplyObject(r);
  size_t mark;
  if (lp_wire_begin(&s->wbuf, LP_MSG_REPLY, &mark) == 0 && lp_wire_u64(&s->wbuf, req) == 0 &&
      lp_wire_u64(&s->wbuf, (uint64_t)value) == 0)
    lp_wire_end(&s->wbuf, mark);
}

/* A task the process hands over goes on the run's stream as it came (an
 * EXPORT frame), keyed by this worker's name and the process's id for it. */
static void on_export(lp_worker *w, lp_wslot *s, lp_wire_msg *m, const char *raw, size_t rawlen) {
  uint64_t id;
  lp_wire_task t;
  if (lp_wire_get_export(m, &id, &t) != 0) return;
  lp_wexport *e = calloc(1, sizeof *e);
  char key[160];
  snprintf(key, sizeof key, "%s:%u:%llu", w->name, s->gen, (unsigned long long)id);
  if (!e || !(e->key = strdup(key))) {
    free(e);
    return;
  }
  e->slot = s;
  e->gen = s->gen;
  e->id = id;
  e->next = s->run->exports;
  s->run->exports = e;
  const char *argv[] = {"XADD", s->run->k.q, "*", "k", key, "x", raw, "o", w->name};
  size_t lens[] = {4, strlen(s->run->k.q), 1, 1, strlen(key), 1, rawlen, 1, strlen(w->name)};
  lp_worker_send_for(w, s->run, 9, argv, lens);
}

static void on_frame(lp_worker *w, lp_wslot *s, lp_wire_msg *m, const char *raw, size_t rawlen) {
  uint64_t v, state, done;
  const char *p;
  size_t n;
  lp_wexec *x;
  switch (m->type) {
    case LP_MSG_READY:
      s->ready = 1;
      /* fall through */
    case LP_MSG_WANT:
      if (lp_wire_get_u64(m, &v) == 0) s->credits += (long)(v > 100000 ? 100000 : v);
      break;
    case LP_MSG_LOADERR:
      if (lp_wire_get_bytes(m, &p, &n) == 0) {
        redisReply *r = lp_redis_cmdf(&w->r, "HSET %s state failed error %b", s->run->k.meta, p, n);
        if (r) freeReplyObject(r);
        s->run->over = 1;
      }
      break;
    case LP_MSG_STARTED:
      if (lp_wire_get_u64(m, &v) == 0 && (x = find(s, v, 0))) x->started = 1;
      break;
    case LP_MSG_RECORD:
      if (lp_wire_get_u64(m, &v) == 0 && (x = find(s, v, 0))) lp_buf_append(&x->out, raw, rawlen);
      break;
    case LP_MSG_RESULT:
      if (lp_wire_get_u64(m, &v) || lp_wire_get_u64(m, &state) || lp_wire_get_u64(m, &done) ||
          !(x = find(s, v, done != 0)))
        break;
      if (state == LP_TASK_FAILED && x->retries > 0 && !x->lost) {
        x->retries--;
        x->again = 1;
      } else if (!x->result.len) {
        lp_buf_append(&x->result, raw, rawlen);
        x->failed = state == LP_TASK_FAILED;
      }
      if (done) subtree_over(w, s, x);
      break;
    case LP_MSG_DONE:
      if (lp_wire_get_u64(m, &v) == 0 && (x = find(s, v, 1))) subtree_over(w, s, x);
      break;
    case LP_MSG_COUNTER: on_counter(w, s, m); break;
    case LP_MSG_EXPORT: on_export(w, s, m, raw, rawlen); break;
    case LP_MSG_FAILURE:
      if (lp_wire_get_bytes(m, &p, &n) == 0) {
        const char *argv[] = {"RPUSH", s->run->k.fail, p};
        size_t lens[] = {5, strlen(s->run->k.fail), n};
        lp_worker_send_for(w, s->run, 3, argv, lens);
      }
      break;
    case LP_MSG_STATS: {
      uint64_t f[8];
      for (int i = 0; i < 8; i++)
        if (lp_wire_get_u64(m, &f[i])) return;
      s->queued = (long)f[2];
      s->running = (long)f[3];
      uint64_t ran = f[4] > s->ran ? f[4] - s->ran : 0;
      w->ran += ran;
      s->run->ran += ran;
      s->run->failed += f[5] > s->failed ? f[5] - s->failed : 0;
      s->run->made += f[0] > s->made ? f[0] - s->made : 0;
      s->run->fin += f[1] > s->fin ? f[1] - s->fin : 0;
      s->ran = f[4];
      s->failed = f[5];
      s->made = f[0];
      s->fin = f[1];
      break;
    }
    default: break; /* TRACE, CANCEL of an export: not carried across machines */
  }
}

int lp_wslot_read(lp_worker *w, lp_wslot *s) {
  if (s->fd < 0) return -1;
  /* What is there, up to a megabyte: frames come in bursts. */
  int ended = 0;
  for (int i = 0; i < 16; i++) {
    if (lp_buf_reserve(&s->rbuf, 65536) != 0) return -1;
    ssize_t got = recv(s->fd, s->rbuf.data + s->rbuf.len, 65536, i ? MSG_DONTWAIT : 0);
    ended = got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR);
    if (got <= 0) break;
    s->rbuf.len += (size_t)got;
    if (got < 65536) break;
  }
  size_t off = 0;
  for (;;) {
    lp_wire_msg m;
    long n = lp_wire_frame(s->rbuf.data + off, s->rbuf.len - off, &m);
    if (n == 0) break;
    if (n < 0) return -1;
    on_frame(w, s, &m, s->rbuf.data + off, (size_t)n);
    off += (size_t)n;
  }
  memmove(s->rbuf.data, s->rbuf.data + off, s->rbuf.len - off);
  s->rbuf.len -= off;
  return ended ? -1 : 0;
}

/* The outcome of a task this worker handed over: its frames go to the
 * process that handed it over, under the id it knows the task by. */
void lp_wslot_relay(lp_worker *w, lp_wrun *run, const char *key, const char *out, size_t len) {
  (void)w;
  lp_wexport **pe = &run->exports;
  while (*pe && strcmp((*pe)->key, key) != 0) pe = &(*pe)->next;
  lp_wexport *e = *pe;
  if (!e) return;
  *pe = e->next;
  lp_wslot *s = e->slot;
  if (s->gen != e->gen || s->fd < 0) goto over; /* that process is gone, and its task */
  lp_wire_msg m;
  int resulted = 0;
  while (len > 0) {
    long n = lp_wire_frame(out, len, &m);
    if (n <= 0) break;
    uint64_t v, kind, task, state, done;
    const char *fn, *data, *note;
    size_t fnlen, dlen, notelen;
    double prio;
    size_t mark;
    if (m.type == LP_MSG_RECORD && lp_wire_get_u64(&m, &v) == 0 &&
        lp_wire_get_u64(&m, &kind) == 0 && lp_wire_get_u64(&m, &task) == 0 &&
        lp_wire_get_bytes(&m, &fn, &fnlen) == 0 && lp_wire_get_f64(&m, &prio) == 0 &&
        lp_wire_get_bytes(&m, &data, &dlen) == 0) {
      if (lp_wire_begin(&s->wbuf, LP_MSG_RECORD, &mark) == 0 && lp_wire_u64(&s->wbuf, e->id) == 0 &&
          lp_wire_u64(&s->wbuf, kind) == 0 && lp_wire_u64(&s->wbuf, task) == 0 &&
          lp_wire_bytes(&s->wbuf, fn, fnlen) == 0 && lp_wire_f64(&s->wbuf, prio) == 0 &&
          lp_wire_bytes(&s->wbuf, data, dlen) == 0)
        lp_wire_end(&s->wbuf, mark);
    } else if (m.type == LP_MSG_RESULT && lp_wire_get_u64(&m, &v) == 0 &&
               lp_wire_get_u64(&m, &state) == 0 && lp_wire_get_u64(&m, &done) == 0 &&
               lp_wire_get_bytes(&m, &data, &dlen) == 0 &&
               lp_wire_get_bytes(&m, &note, &notelen) == 0) {
      if (lp_wire_begin(&s->wbuf, LP_MSG_RESULT, &mark) == 0 && lp_wire_u64(&s->wbuf, e->id) == 0 &&
          lp_wire_u64(&s->wbuf, state) == 0 && lp_wire_u64(&s->wbuf, 1) == 0 &&
          lp_wire_bytes(&s->wbuf, data, dlen) == 0 && lp_wire_bytes(&s->wbuf, note, notelen) == 0) {
        lp_wire_end(&s->wbuf, mark);
        resulted = 1;
      }
      break;
    } else {
      break;
    }
    out += n;
    len -= (size_t)n;
  }
  if (!resulted) {
    /* A malformed outcome: the task failed, its process hears so. */
    lp_buf msg;
    lp_buf_init(&msg);
    const char *text = "task failed: its outcome from the broker is malformed";
    size_t mark;
    if (lp_broker_text(&msg, text) == 0 && lp_wire_begin(&s->wbuf, LP_MSG_RESULT, &mark) == 0 &&
        lp_wire_u64(&s->wbuf, e->id) == 0 && lp_wire_u64(&s->wbuf, LP_TASK_FAILED) == 0 &&
        lp_wire_u64(&s->wbuf, 1) == 0 && lp_wire_bytes(&s->wbuf, msg.data, msg.len) == 0 &&
        lp_wire_bytes(&s->wbuf, "", 0) == 0)
      lp_wire_end(&s->wbuf, mark);
    lp_buf_free(&msg);
  }
over:
  free(e->key);
  free(e);
}
