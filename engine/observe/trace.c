/*
 * trace.c - --trace: a run's execution as Chrome trace-event JSON.
 *
 * DESIGN. The workers record their own events (core/tracebuf.c: slices of
 * a task's execution and spawns, lp_stats_ns() times, no lock). This file
 * keeps the rest of the trace and writes it: the origin (time 0 of the
 * file, taken by lp_trace_open before any worker starts), the host
 * thread's queue-depth samples (host-only), and the events worker
 * processes send, each thread's on a buffer of its own (any reader thread,
 * under the trace's lock). Nothing is read across threads while the run
 * goes on: the file is written by lp_trace_close after the workers have
 * been joined.
 *
 * The file: one "X" event per slice on track "worker N" (tid N), flow
 * events from the spawning slice to the first slice of the child ("s" and
 * "f" with the child's id), "C" counters "tasks" {queued, suspended}, and
 * metadata naming the tracks. Events a buffer had no room for are counted
 * (otherData.dropped_events).
 */
#include "trace.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "names.h"
#include "pool.h"
#include "task.h"

#define COUNTER_MAX (1u << 20)

typedef lp_trace_ev tev;
#define EV_SLICE LP_TRACE_SLICE
#define EV_SPAWN LP_TRACE_SPAWN

/* The events of one thread of a worker process. */
typedef struct remote {
  int process, thread;
  lp_tracebuf *b;
} remote;

typedef struct sample {
  uint64_t ts;
  long queued;
  long suspended;
} sample;

typedef struct lp_trace {
  uint64_t origin;
  pthread_mutex_t lock; /* guards the threads of worker processes */
  remote *remote;       /* one per thread of a worker process that sent events */
  int nremote;
  sample *samples; /* host-only */
  size_t nsamples;
  size_t capsamples;
} lp_trace;

int lp_trace_open(luapool *eng) {
  lp_trace *tr = calloc(1, sizeof *tr);
  if (!tr) return -1;
  pthread_mutex_init(&tr->lock, NULL);
  tr->origin = lp_stats_ns();
  eng->trace = tr;
  return 0;
}

/* Worker i's buffer: empty when it has none. */
static lp_tracebuf *worker_buf(luapool *eng, int i) {
  static lp_tracebuf none;
  lp_tracebuf *b = eng->workers ? eng->workers[i].stats.trace : NULL;
  return b ? b : &none;
}

void lp_trace_counter(luapool *eng, long queued, long suspended) {
  lp_trace *tr = eng->trace;
  if (tr->nsamples > 0) {
    sample *last = &tr->samples[tr->nsamples - 1];
    if (last->queued == queued && last->suspended == suspended) return;
  }
  if (tr->nsamples == tr->capsamples) {
    if (tr->capsamples >= COUNTER_MAX) return;
    size_t cap = tr->capsamples ? tr->capsamples * 2 : 1024;
    sample *ns = realloc(tr->samples, sizeof *ns * cap);
    if (!ns) return;
    tr->samples = ns;
    tr->capsamples = cap;
  }
  tr->samples[tr->nsamples++] = (sample){lp_stats_ns() - tr->origin, queued, suspended};
}

void lp_trace_remote(luapool *eng, int process, int thread, const lp_trace_ev *ev, const char *fn,
                     size_t fnlen) {
  lp_trace *tr = eng->trace;
  if (!tr) return;
  int id = lp_names_intern(&eng->names, fn, fnlen);
  if (id < 0) return;
  pthread_mutex_lock(&tr->lock);
  lp_tracebuf *b = NULL;
  for (int i = 0; i < tr->nremote && !b; i++)
    if (tr->remote[i].process == process && tr->remote[i].thread == thread) b = tr->remote[i].b;
  if (!b) {
    remote *nr = realloc(tr->remote, sizeof *nr * (size_t)(tr->nremote + 1));
    if (nr) tr->remote = nr;
    if (nr && (b = lp_tracebuf_new())) tr->remote[tr->nremote++] = (remote){process, thread, b};
  }
  tev *e = b ? lp_tracebuf_push(b) : NULL;
  if (e) {
    *e = *ev; /* the process's clock is the same monotonic clock */
    e->fn = id;
  }
  pthread_mutex_unlock(&tr->lock);
}

uint64_t lp_trace_dropped(luapool *eng) {
  uint64_t n = 0;
  if (eng->trace) {
    for (int i = 0; i < eng->nworkers; i++) n += worker_buf(eng, i)->dropped;
    for (int i = 0; i < eng->trace->nremote; i++) n += eng->trace->remote[i].b->dropped;
  }
  return n;
}

/* ---- writing ---- */

/* Where each task's first slice is: an open-addressing table by task id
 * (ids start at 1, so 0 marks an empty entry). */
typedef struct first {
  uint64_t task;
  uint64_t ts;
  uint64_t end;
  uint64_t spawner; /* from its spawn event: a task sent to a worker process
                       is a root there, and its slices name no parent */
  int track;        /* its index in the tracks */
  int sliced;       /* ts, end and track are its first slice's */
} first;

static size_t slot_of(uint64_t id, size_t mask) {
  id ^= id >> 33;
  id *= 0xff51afd7ed558ccdULL;
  id ^= id >> 33;
  return (size_t)id & mask;
}

static first *find(first *tab, size_t mask, uint64_t id) {
  size_t i = slot_of(id, mask);
  while (tab[i].task && tab[i].task != id) i = (i + 1) & mask;
  return &tab[i];
}

static void put_us(FILE *f, const char *key, uint64_t ns) {
  fprintf(f, ",\"%s\":%" PRIu64 ".%03u", key, ns / 1000, (unsigned)(ns % 1000));
}

static void put_name(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c < 0x20)
      fprintf(f, "\\u%04x", c);
    else
      fputc(c, f);
  }
  fputc('"', f);
}

/* What the file shows: the engine's workers on process 1 (tids 1..n),
 * then each worker process's threads on a process of their own, with tids
 * that go on counting, so a tid names one track in the whole file. */
typedef struct track {
  lp_tracebuf *b;
  int pid, tid;
  int process, thread; /* a thread of a worker process; 0 for a worker */
} track;

static void put_meta(FILE *f, int pid, int tid, const char *what, const char *label) {
  fprintf(f, ",\n{\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"name\":\"%s\",\"args\":{\"name\":", pid, tid,
          what);
  put_name(f, label);
  fprintf(f, "}}");
  if (!strcmp(what, "thread_name"))
    fprintf(f,
            ",\n{\"ph\":\"M\",\"pid\":%d,\"tid\":%d,\"name\":\"thread_sort_index\","
            "\"args\":{\"sort_index\":%d}}",
            pid, tid, tid);
}

static void write_events(luapool *eng, lp_trace *tr, const track *tk, int ntk, FILE *f, first *tab,
                         size_t mask) {
  fprintf(f, "{\"traceEvents\":[\n");
  fprintf(f, "{\"ph\":\"M\",\"pid\":1,\"name\":\"process_name\",\"args\":{\"name\":\"luapool\"}}");
  for (int i = 0; i < ntk; i++) {
    char label[256];
    const track *t = &tk[i];
    if (t->process) {
      if (!i || tk[i - 1].pid != tk[i].pid) {
        snprintf(label, sizeof label, "worker process %d", t->process);
        put_meta(f, tk[i].pid, tk[i].tid, "process_name", label);
      }
      snprintf(label, sizeof label, "process %d thread %d", t->process, t->thread);
      put_meta(f, tk[i].pid, tk[i].tid, "thread_name", label);
      continue;
    }
    /* "worker N"; with named pools, "POOL N" counted within the pool. */
    const char *pool = NULL;
    int k = i + 1;
    for (int p = 0; eng->npools > 1 && p < eng->npools; p++) {
      lp_pooldef *d = &eng->pools[p];
      if (i >= d->first_worker && i < d->first_worker + d->nworkers) {
        pool = d->name;
        k = i - d->first_worker + 1;
      }
    }
    snprintf(label, sizeof label, "%s %d", pool ? pool : "worker", k);
    put_meta(f, 1, tk[i].tid, "thread_name", label);
  }
  for (int i = 0; i < ntk; i++) {
    lp_tracebuf *b = tk[i].b;
    for (size_t k = 0; k < b->n; k++) {
      tev *e = lp_tracebuf_at(b, k);
      if (e->kind == EV_SLICE) {
        fprintf(f, ",\n{\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"cat\":\"task\",\"name\":", tk[i].pid,
                tk[i].tid);
        put_name(f, lp_names_get(&eng->names, e->fn));
        put_us(f, "ts", e->ts);
        put_us(f, "dur", e->end - e->ts);
        uint64_t parent = e->other;
        if (!parent && tab) parent = find(tab, mask, e->task)->spawner;
        fprintf(f, ",\"args\":{\"id\":%" PRIu64 ",\"parent\":%" PRIu64 ",\"depth\":%d}}", e->task,
                parent, e->depth);
      } else if (tab) {
        first *fs = find(tab, mask, e->task);
        if (!fs->sliced) continue; /* the child never ran (cancelled) */
        fprintf(f,
                ",\n{\"ph\":\"s\",\"pid\":%d,\"tid\":%d,\"cat\":\"spawn\",\"name\":\"spawn\","
                "\"id\":%" PRIu64,
                tk[i].pid, tk[i].tid, e->task);
        put_us(f, "ts", e->ts);
        fprintf(f, "}");
        fprintf(f,
                ",\n{\"ph\":\"f\",\"bp\":\"e\",\"pid\":%d,\"tid\":%d,\"cat\":\"spawn\","
                "\"name\":\"spawn\",\"id\":%" PRIu64,
                tk[fs->track].pid, tk[fs->track].tid, e->task);
        /* 1 ns into the slice: at its very start the slice before it on
         * the track (which ends there) would enclose it too. */
        put_us(f, "ts", fs->ts + (fs->end - fs->ts >= 2));
        fprintf(f, "}");
      }
    }
  }
  for (size_t k = 0; k < tr->nsamples; k++) {
    sample *s = &tr->samples[k];
    fprintf(f, ",\n{\"ph\":\"C\",\"pid\":1,\"name\":\"tasks\"");
    put_us(f, "ts", s->ts);
    fprintf(f, ",\"args\":{\"queued\":%ld,\"suspended\":%ld}}", s->queued, s->suspended);
  }
  fprintf(f,
          "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{\"producer\":\"luapool %s\","
          "\"workers\":%d,\"process_threads\":%d,\"dropped_events\":%" PRIu64 "}}\n",
          LUAPOOL_VERSION, eng->nworkers, tr->nremote, lp_trace_dropped(eng));
}

/* The table of first slices, or NULL when out of memory (no flows then). */
static first *first_slices(const track *tk, int ntk, size_t *mask_out) {
  size_t nslices = 0;
  for (int i = 0; i < ntk; i++) nslices += tk[i].b->n;
  size_t cap = 16;
  while (cap < nslices * 2) cap *= 2;
  first *tab = calloc(cap, sizeof *tab);
  if (!tab) return NULL;
  for (int i = 0; i < ntk; i++) {
    lp_tracebuf *b = tk[i].b;
    for (size_t k = 0; k < b->n; k++) {
      tev *e = lp_tracebuf_at(b, k);
      first *fs = find(tab, cap - 1, e->task);
      fs->task = e->task;
      if (e->kind == EV_SPAWN) {
        fs->spawner = e->other;
      } else if (!fs->sliced || e->ts < fs->ts) {
        fs->ts = e->ts;
        fs->end = e->end;
        fs->track = i;
        fs->sliced = 1;
      }
    }
  }
  *mask_out = cap - 1;
  return tab;
}

static int by_process(const void *a, const void *b) {
  const remote *x = a, *y = b;
  if (x->process != y->process) return x->process < y->process ? -1 : 1;
  return x->thread < y->thread ? -1 : x->thread > y->thread;
}

/* Every track in the order of the file; NULL when out of memory. */
static track *tracks(luapool *eng, lp_trace *tr, int *n) {
  track *tk = malloc(sizeof *tk * (size_t)(eng->nworkers + tr->nremote + 1));
  if (!tk) return NULL;
  if (tr->nremote > 1) qsort(tr->remote, (size_t)tr->nremote, sizeof *tr->remote, by_process);
  int k = 0;
  for (int i = 0; i < eng->nworkers; i++, k++) tk[k] = (track){worker_buf(eng, i), 1, k + 1, 0, 0};
  for (int i = 0; i < tr->nremote; i++, k++) {
    remote *r = &tr->remote[i];
    tk[k] = (track){r->b, 1 + r->process, k + 1, r->process, r->thread};
  }
  *n = k;
  return tk;
}

/* The file counts from the origin; an event of a worker process from
 * before it (not expected: the clock is the same) is put at 0. */
static void from_origin(lp_trace *tr, track *tk, int ntk) {
  for (int i = 0; i < ntk; i++)
    for (size_t k = 0; k < tk[i].b->n; k++) {
      tev *e = lp_tracebuf_at(tk[i].b, k);
      e->ts = e->ts > tr->origin ? e->ts - tr->origin : 0;
      if (e->kind == EV_SLICE) e->end = e->end > tr->origin ? e->end - tr->origin : 0;
    }
}

static void free_trace(luapool *eng, lp_trace *tr) {
  for (int i = 0; i < tr->nremote; i++) lp_tracebuf_free(tr->remote[i].b);
  free(tr->remote);
  free(tr->samples);
  pthread_mutex_destroy(&tr->lock);
  free(tr);
  eng->trace = NULL;
}

static void report(luapool *eng, const char *path, const char *why) {
  char msg[1200];
  snprintf(msg, sizeof msg, "luapool: cannot write the trace to %s: %s", path, why);
  if (eng->cfg.on_failure)
    eng->cfg.on_failure(eng->cfg.ud, msg);
  else
    fprintf(stderr, "%s\n", msg);
}

void lp_trace_close(luapool *eng) {
  const char *path = eng->cfg.trace_path;
  if (!path) return;
  if (!eng->trace && lp_trace_open(eng) != 0) { /* not opened at the start: out of memory */
    report(eng, path, "out of memory");
    return;
  }
  lp_trace *tr = eng->trace;
  if (eng->up) {
    /* A worker process: its events go to the engine, which writes them
     * with its own. */
    for (int i = 0; i < eng->nworkers; i++)
      for (size_t k = 0; k < worker_buf(eng, i)->n; k++) {
        tev e = *lp_tracebuf_at(worker_buf(eng, i), k);
        eng->up->ops->trace(eng->up, i + 1, &e, lp_names_get(&eng->names, e.fn));
      }
    free_trace(eng, tr);
    return;
  }
  int ntk = 0;
  track *tk = tracks(eng, tr, &ntk);
  FILE *f = tk ? fopen(path, "w") : NULL;
  if (!f) {
    report(eng, path, tk ? strerror(errno) : "out of memory");
  } else {
    from_origin(tr, tk, ntk);
    size_t mask = 0;
    first *tab = first_slices(tk, ntk, &mask);
    write_events(eng, tr, tk, ntk, f, tab, mask);
    free(tab);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) report(eng, path, "write error");
  }
  free(tk);
  free_trace(eng, tr);
}
