/*
 * trace.c - --trace: a run's execution as Chrome trace-event JSON.
 *
 * DESIGN. Each worker appends fixed-size events to its own buffer (a list
 * of chunks, never moved once written), with no lock and no system call:
 * the clock is the vDSO's CLOCK_MONOTONIC. A slice is the time one task's
 * code runs on a worker without interruption; it ends when the worker's
 * running task changes (the task yields, ends, or runs a child inline), so a
 * task that waits shows as several slices. Spawns are events of the spawning
 * worker. The host thread alone appends queue-depth samples. Nothing is read
 * across threads while the run goes on: the file is written by
 * lp_trace_close after the workers have been joined.
 *
 * The file: one "X" event per slice on track "worker N" (tid N), flow
 * events from the spawning slice to the first slice of the child ("s" and
 * "f" with the child's id), "C" counters "tasks" {queued, suspended}, and
 * metadata naming the tracks. Each worker keeps at most LP_TRACE_MAX events;
 * the rest are counted as dropped (otherData.dropped_events).
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
#include "task.h"

#define CHUNK 4096
#define LP_TRACE_MAX (1u << 21) /* events per worker (80 MB) */
#define COUNTER_MAX (1u << 20)

typedef lp_trace_ev tev;
#define EV_SLICE LP_TRACE_SLICE
#define EV_SPAWN LP_TRACE_SPAWN

struct lp_tbuf {
  struct lp_trace *tr;
  tev **chunks;
  size_t nchunks;
  size_t n; /* events written */
  uint64_t dropped;
  /* The open slice. */
  int open;
  int fn;
  int depth;
  uint64_t start;
  uint64_t task;
  uint64_t parent;
  /* A thread of a worker process: its events come from its TRACE frames. */
  int process, thread;
};

typedef struct sample {
  uint64_t ts;
  long queued;
  long suspended;
} sample;

typedef struct lp_trace {
  uint64_t origin;
  int n;
  struct lp_tbuf *w;       /* one per worker */
  pthread_mutex_t lock;    /* guards the threads of worker processes */
  struct lp_tbuf **remote; /* one per thread of a worker process that sent events */
  int nremote;
  sample *samples; /* host-only */
  size_t nsamples;
  size_t capsamples;
} lp_trace;

int lp_trace_open(luapool *eng) {
  lp_trace *tr = calloc(1, sizeof *tr);
  if (!tr) return -1;
  tr->n = eng->nworkers;
  tr->w = calloc((size_t)tr->n, sizeof *tr->w);
  if (!tr->w) {
    free(tr);
    return -1;
  }
  for (int i = 0; i < tr->n; i++) tr->w[i].tr = tr;
  pthread_mutex_init(&tr->lock, NULL);
  tr->origin = lp_stats_ns();
  eng->trace = tr;
  return 0;
}

struct lp_tbuf *lp_trace_buf(luapool *eng, int i) {
  if (!eng->cfg.trace_path) return NULL;
  /* Made when the first worker is set up: the number of workers is known. */
  if (!eng->trace && lp_trace_open(eng) != 0) return NULL;
  return i < eng->trace->n ? &eng->trace->w[i] : NULL;
}

static uint64_t now(const struct lp_tbuf *b) { return lp_stats_ns() - b->tr->origin; }

/* A slot for one more event, or NULL (counted as dropped). */
static tev *push(struct lp_tbuf *b) {
  size_t c = b->n / CHUNK;
  if (b->n >= LP_TRACE_MAX) goto drop;
  if (c == b->nchunks) {
    tev **nc = realloc(b->chunks, sizeof *nc * (c + 1));
    if (!nc) goto drop;
    b->chunks = nc;
    if (!(nc[c] = malloc(sizeof(tev) * CHUNK))) goto drop;
    b->nchunks++;
  }
  return &b->chunks[c][b->n++ % CHUNK];
drop:
  b->dropped++;
  return NULL;
}

static tev *at(const struct lp_tbuf *b, size_t i) { return &b->chunks[i / CHUNK][i % CHUNK]; }

void lp_trace_switch(struct lp_tbuf *b, lp_task *to) {
  uint64_t t = now(b);
  if (b->open) {
    tev *e = push(b);
    if (e) *e = (tev){b->start, t, b->task, b->parent, b->fn, (int16_t)b->depth, EV_SLICE};
  }
  b->open = to != NULL;
  if (!to) return;
  b->start = t;
  b->task = to->id;
  b->parent = to->parent ? to->parent->id : 0;
  b->fn = to->fn;
  b->depth = to->depth > INT16_MAX ? INT16_MAX : to->depth;
}

void lp_trace_spawn(struct lp_tbuf *b, lp_task *parent, lp_task *child) {
  tev *e = push(b);
  if (e) *e = (tev){now(b), 0, child->id, parent->id, child->fn, 0, EV_SPAWN};
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
  struct lp_tbuf *b = NULL;
  for (int i = 0; i < tr->nremote && !b; i++)
    if (tr->remote[i]->process == process && tr->remote[i]->thread == thread) b = tr->remote[i];
  if (!b) {
    struct lp_tbuf **nr = realloc(tr->remote, sizeof *nr * (size_t)(tr->nremote + 1));
    if (nr) tr->remote = nr;
    if (nr && (b = calloc(1, sizeof *b))) {
      b->tr = tr;
      b->process = process;
      b->thread = thread;
      tr->remote[tr->nremote++] = b;
    }
  }
  tev *e = b ? push(b) : NULL;
  if (e) {
    /* The process's clock is the same monotonic clock: only the origin moves. */
    *e = *ev;
    e->fn = id;
    e->ts = ev->ts > tr->origin ? ev->ts - tr->origin : 0;
    if (e->kind == EV_SLICE) e->end = ev->end > tr->origin ? ev->end - tr->origin : 0;
  }
  pthread_mutex_unlock(&tr->lock);
}

uint64_t lp_trace_dropped(luapool *eng) {
  uint64_t n = 0;
  if (eng->trace) {
    for (int i = 0; i < eng->trace->n; i++) n += eng->trace->w[i].dropped;
    for (int i = 0; i < eng->trace->nremote; i++) n += eng->trace->remote[i]->dropped;
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
  struct lp_tbuf *b;
  int pid, tid;
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
    const struct lp_tbuf *b = tk[i].b;
    if (b->process) {
      if (!i || tk[i - 1].pid != tk[i].pid) {
        snprintf(label, sizeof label, "worker process %d", b->process);
        put_meta(f, tk[i].pid, tk[i].tid, "process_name", label);
      }
      snprintf(label, sizeof label, "process %d thread %d", b->process, b->thread);
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
    struct lp_tbuf *b = tk[i].b;
    for (size_t k = 0; k < b->n; k++) {
      tev *e = at(b, k);
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
          LUAPOOL_VERSION, tr->n, tr->nremote, lp_trace_dropped(eng));
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
    struct lp_tbuf *b = tk[i].b;
    for (size_t k = 0; k < b->n; k++) {
      tev *e = at(b, k);
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
  const struct lp_tbuf *x = *(struct lp_tbuf *const *)a, *y = *(struct lp_tbuf *const *)b;
  if (x->process != y->process) return x->process < y->process ? -1 : 1;
  return x->thread < y->thread ? -1 : x->thread > y->thread;
}

/* Every track in the order of the file; NULL when out of memory. */
static track *tracks(lp_trace *tr, int *n) {
  track *tk = malloc(sizeof *tk * (size_t)(tr->n + tr->nremote + 1));
  if (!tk) return NULL;
  if (tr->nremote > 1) qsort(tr->remote, (size_t)tr->nremote, sizeof *tr->remote, by_process);
  int k = 0;
  for (int i = 0; i < tr->n; i++, k++) tk[k] = (track){&tr->w[i], 1, k + 1};
  for (int i = 0; i < tr->nremote; i++, k++)
    tk[k] = (track){tr->remote[i], 1 + tr->remote[i]->process, k + 1};
  *n = k;
  return tk;
}

static void free_buf(struct lp_tbuf *b) {
  for (size_t c = 0; c < b->nchunks; c++) free(b->chunks[c]);
  free(b->chunks);
}

static void free_trace(luapool *eng, lp_trace *tr) {
  for (int i = 0; i < tr->n; i++) free_buf(&tr->w[i]);
  for (int i = 0; i < tr->nremote; i++) {
    free_buf(tr->remote[i]);
    free(tr->remote[i]);
  }
  free(tr->remote);
  free(tr->w);
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
  if (!eng->trace && lp_trace_open(eng) != 0) { /* no worker ran: an empty trace */
    report(eng, path, "out of memory");
    return;
  }
  lp_trace *tr = eng->trace;
  if (eng->up) {
    /* A worker process: its events go to the engine, which writes them
     * with its own. */
    for (int i = 0; i < tr->n; i++)
      for (size_t k = 0; k < tr->w[i].n; k++) {
        tev e = *at(&tr->w[i], k);
        e.ts += tr->origin;
        if (e.kind == EV_SLICE) e.end += tr->origin;
        eng->up->ops->trace(eng->up, i + 1, &e, lp_names_get(&eng->names, e.fn));
      }
    free_trace(eng, tr);
    return;
  }
  int ntk = 0;
  track *tk = tracks(tr, &ntk);
  FILE *f = tk ? fopen(path, "w") : NULL;
  if (!f) {
    report(eng, path, tk ? strerror(errno) : "out of memory");
  } else {
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
