/*
 * status.c - `luapool status --broker URL`: the runs a broker holds (each
 * with its script, state, task counts and time so far) and the workers that
 * serve it (host, pid, threads, how long since their last heartbeat, tasks
 * run), as two tables with aligned columns. The key schema is
 * engine/broker/KEYS.md.
 *
 * It only reads, with a few pipelined round trips whatever the number of
 * runs. What it prints came from the broker, written by anyone who can
 * write there: control bytes are shown as '?', long text is cut, a field
 * that is missing or not a number shows as '-', never a crash or a
 * terminal escape.
 */
#include "status.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "redis.h"
#include "url.h"

#define EXIT_BROKER 1
#define EXIT_BAD_URL 2
#define TIMEOUT_S 5.0
#define CELL_MAX 48 /* bytes of broker text shown in one cell */
#define BATCH 256   /* runs whose details are asked for in one round trip */

enum { LEFT = 0, RIGHT = 1 };

/* A table of text cells printed with aligned columns: text to the left,
 * numbers to the right, two spaces between. */
typedef struct table {
  int ncols;
  const char *const *head;
  const int *align;
  char **cells; /* rows * ncols, each malloc'd */
  size_t rows, cap;
  int oom;
} table;

static char *copy(const char *s) {
  size_t n = strlen(s) + 1;
  char *c = malloc(n);
  if (c) memcpy(c, s, n);
  return c;
}

/* Adds a row: ncols strings, copied. */
static void table_add(table *t, char **row) {
  if (t->rows == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 16;
    char **cells = realloc(t->cells, cap * (size_t)t->ncols * sizeof *cells);
    if (!cells) {
      t->oom = 1;
      return;
    }
    t->cells = cells;
    t->cap = cap;
  }
  char **dst = t->cells + t->rows * (size_t)t->ncols;
  for (int i = 0; i < t->ncols; i++) {
    dst[i] = copy(row[i]);
    if (!dst[i]) t->oom = 1;
  }
  t->rows++;
}

static void print_row(FILE *out, const table *t, const char *const *row, const size_t *width) {
  for (int i = 0; i < t->ncols; i++) {
    const char *s = row[i] ? row[i] : "";
    int w = (int)width[i];
    if (i == t->ncols - 1 && t->align[i] == LEFT)
      fprintf(out, "%s\n", s); /* no spaces at the end of a line */
    else
      fprintf(out, t->align[i] == RIGHT ? "%*s%s" : "%-*s%s", w, s,
              i == t->ncols - 1 ? "\n" : "  ");
  }
}

static void table_print(FILE *out, const table *t) {
  size_t width[16] = {0};
  for (int i = 0; i < t->ncols; i++) width[i] = strlen(t->head[i]);
  for (size_t r = 0; r < t->rows; r++)
    for (int i = 0; i < t->ncols; i++) {
      const char *s = t->cells[r * (size_t)t->ncols + i];
      size_t n = s ? strlen(s) : 0;
      if (n > width[i]) width[i] = n;
    }
  print_row(out, t, t->head, width);
  for (size_t r = 0; r < t->rows; r++)
    print_row(out, t, (const char *const *)t->cells + r * (size_t)t->ncols, width);
}

static void table_free(table *t) {
  for (size_t i = 0; i < t->rows * (size_t)t->ncols; i++) free(t->cells[i]);
  free(t->cells);
}

/* Broker text fit for a terminal cell: control bytes as '?', cut at
 * CELL_MAX bytes (marked with "..."). */
static void cell_text(char *out, const char *s, size_t len) {
  size_t n = len > CELL_MAX ? CELL_MAX - 3 : len;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    out[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
  }
  if (len > CELL_MAX) {
    memcpy(out + n, "...", 3);
    n += 3;
  }
  out[n] = '\0';
}

/* A cell for what is missing or unreadable. */
static void unknown(char *cell) {
  cell[0] = '-';
  cell[1] = '\0';
}

/* A reply's string as a cell; "-" when it is not a string. */
static void cell_reply(char *out, const redisReply *r) {
  if (r && r->type == REDIS_REPLY_STRING)
    cell_text(out, r->str, r->len);
  else
    unknown(out);
}

/* A whole number from broker text (a reply or a field): 0, or -1 when it
 * is missing or not one. */
static int whole(const char *s, size_t len, long long *v) {
  char buf[32];
  if (!s || len == 0 || len >= sizeof buf) return -1;
  memcpy(buf, s, len);
  buf[len] = '\0';
  char *end;
  *v = strtoll(buf, &end, 10);
  return *end == '\0' && buf[0] != ' ' ? 0 : -1;
}

static int reply_whole(const redisReply *r, long long *v) {
  return r && r->type == REDIS_REPLY_STRING ? whole(r->str, r->len, v) : -1;
}

/* A duration in ms as a person reads it: 850ms, 4.2s, 3m04s, 2h03m, 5d02h. */
static void duration(char *out, size_t n, long long ms) {
  if (ms < 0) ms = 0; /* clocks of different machines disagree a little */
  long long s = ms / 1000;
  if (ms < 1000)
    snprintf(out, n, "%lldms", ms);
  else if (ms < 60000)
    snprintf(out, n, "%.1fs", (double)ms / 1000);
  else if (s < 3600)
    snprintf(out, n, "%lldm%02llds", s / 60, s % 60);
  else if (s < 86400)
    snprintf(out, n, "%lldh%02lldm", s / 3600, s / 60 % 60);
  else
    snprintf(out, n, "%lldd%02lldh", s / 86400, s / 3600 % 24);
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int broker_error(lp_redis *r, const char *what, const redisReply *reply) {
  char url[512];
  lp_broker_url_show(&r->url, url, sizeof url);
  if (!reply)
    fprintf(stderr, "luapool: %s\n", r->err);
  else
    fprintf(stderr, "luapool: the broker at %s answered %s with: %.*s\n", url, what,
            (int)reply->len, reply->str ? reply->str : "");
  return EXIT_BROKER;
}

static const char *const run_head[] = {"RUN",    "SCRIPT",  "STATE",  "DONE",
                                       "QUEUED", "RUNNING", "FAILED", "ELAPSED"};
static const int run_align[] = {LEFT, LEFT, LEFT, RIGHT, RIGHT, RIGHT, RIGHT, RIGHT};

/* Queues the two reads of one run's details: its meta and its counts. */
static int ask_run(lp_redis *r, const redisReply *id) {
  char meta[96], counts[96];
  int m = snprintf(meta, sizeof meta, "lp:{%.*s}:meta", (int)id->len, id->str);
  int c = snprintf(counts, sizeof counts, "lp:{%.*s}:n", (int)id->len, id->str);
  if (m < 0 || (size_t)m >= sizeof meta || c < 0 || (size_t)c >= sizeof counts) {
    meta[0] = counts[0] = '\0'; /* not a run id: its keys hold nothing */
    m = c = 0;
  }
  const char *hm[] = {"HMGET", meta, "script", "state", "started", "ended"};
  const size_t hml[] = {5, (size_t)m, 6, 5, 7, 5};
  const char *hn[] = {"HGETALL", counts};
  const size_t hnl[] = {7, (size_t)c};
  return lp_redis_append(r, 6, hm, hml) || lp_redis_append(r, 2, hn, hnl) ? -1 : 0;
}

/* The row of a run from its id and the replies of ask_run. */
static void run_row(table *t, const redisReply *id, const redisReply *meta,
                    const redisReply *counts, long long now) {
  char cells[8][CELL_MAX + 1];
  char *row[8];
  for (int i = 0; i < 8; i++) row[i] = cells[i];
  cell_text(cells[0], id->str, id->len);
  int has_meta = meta->type == REDIS_REPLY_ARRAY && meta->elements == 4;
  cell_reply(cells[1], has_meta ? meta->element[0] : NULL);
  cell_reply(cells[2], has_meta ? meta->element[1] : NULL);
  /* done and failed, summed by the workers; queued:W and running:W, one
   * field per worker, summed here. */
  static const char *const names[4] = {"done", "queued", "running", "failed"};
  long long sum[4] = {0, 0, 0, 0};
  int bad[4] = {0, 0, 0, 0};
  int has_counts = counts->type == REDIS_REPLY_ARRAY && counts->elements % 2 == 0;
  for (size_t f = 0; has_counts && f + 1 < counts->elements; f += 2) {
    const redisReply *k = counts->element[f];
    if (k->type != REDIS_REPLY_STRING) continue;
    for (int i = 0; i < 4; i++) {
      size_t nl = strlen(names[i]);
      if (k->len < nl || memcmp(k->str, names[i], nl) != 0 ||
          (k->len > nl && k->str[nl] != ':'))
        continue;
      long long v;
      if (reply_whole(counts->element[f + 1], &v) == 0)
        sum[i] += v;
      else
        bad[i] = 1;
    }
  }
  for (int i = 0; i < 4; i++) {
    if (!has_counts || bad[i])
      unknown(cells[3 + i]);
    else
      snprintf(cells[3 + i], CELL_MAX + 1, "%lld", sum[i]);
  }
  long long started, ended;
  if (has_meta && reply_whole(meta->element[2], &started) == 0) {
    if (reply_whole(meta->element[3], &ended) != 0) ended = now;
    duration(cells[7], CELL_MAX + 1, ended - started);
  } else {
    unknown(cells[7]);
  }
  table_add(t, row);
}

static int show_runs(lp_redis *r, FILE *out, long long now) {
  redisReply *ids = lp_redis_cmdf(r, "ZRANGE lp:runs 0 -1");
  if (!ids || ids->type != REDIS_REPLY_ARRAY) {
    int rc = broker_error(r, "ZRANGE lp:runs", ids);
    if (ids) freeReplyObject(ids);
    return rc;
  }
  if (ids->elements == 0) {
    fprintf(out, "no runs\n");
    freeReplyObject(ids);
    return 0;
  }
  table t = {8, run_head, run_align, NULL, 0, 0, 0};
  int rc = 0;
  for (size_t first = 0; first < ids->elements && rc == 0; first += BATCH) {
    size_t n = ids->elements - first < BATCH ? ids->elements - first : BATCH;
    size_t asked = 0;
    for (; asked < n && rc == 0; asked++) {
      const redisReply *id = ids->element[first + asked];
      if (id->type != REDIS_REPLY_STRING || ask_run(r, id) != 0) rc = -1;
    }
    if (rc != 0) {
      rc = broker_error(r, "", NULL);
      break;
    }
    for (size_t i = 0; i < n; i++) {
      redisReply *meta = lp_redis_reply(r);
      redisReply *counts = meta ? lp_redis_reply(r) : NULL;
      if (!counts) {
        if (meta) freeReplyObject(meta);
        rc = broker_error(r, "", NULL);
        break;
      }
      run_row(&t, ids->element[first + i], meta, counts, now);
      freeReplyObject(meta);
      freeReplyObject(counts);
    }
  }
  if (rc == 0 && t.oom) {
    fprintf(stderr, "luapool: status: out of memory\n");
    rc = EXIT_BROKER;
  }
  if (rc == 0) table_print(out, &t);
  table_free(&t);
  freeReplyObject(ids);
  return rc;
}

static const char *const worker_head[] = {"WORKER",  "HOST",      "PID",
                                          "THREADS", "HEARTBEAT", "TASKS RUN"};
static const int worker_align[] = {LEFT, LEFT, RIGHT, RIGHT, RIGHT, RIGHT};

/* The row of a worker from its entry in lp:workers: "host pid threads
 * beat_ms tasks_run". */
static void worker_row(table *t, const redisReply *name, const redisReply *entry, long long now) {
  char cells[6][CELL_MAX + 1];
  char *row[6];
  for (int i = 0; i < 6; i++) {
    row[i] = cells[i];
    unknown(cells[i]);
  }
  cell_text(cells[0], name->str, name->len);
  const char *s = entry->type == REDIS_REPLY_STRING ? entry->str : "";
  const char *end = s + (entry->type == REDIS_REPLY_STRING ? entry->len : 0);
  for (int field = 1; field < 6 && s < end; field++) {
    while (s < end && *s == ' ') s++;
    const char *word = s;
    while (s < end && *s != ' ') s++;
    if (s == word) break;
    long long v;
    char age[32];
    if (field == 1) {
      cell_text(cells[1], word, (size_t)(s - word));
    } else if (whole(word, (size_t)(s - word), &v) != 0) {
      continue; /* stays "-" */
    } else if (field == 4) {
      duration(age, sizeof age, now - v);
      snprintf(cells[4], CELL_MAX + 1, "%s ago", age);
    } else {
      snprintf(cells[field], CELL_MAX + 1, "%lld", v);
    }
  }
  table_add(t, row);
}

typedef struct worker_entry {
  const redisReply *name, *entry;
} worker_entry;

static int by_name(const void *a, const void *b) {
  const redisReply *x = ((const worker_entry *)a)->name, *y = ((const worker_entry *)b)->name;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(x->str, y->str, n);
  return c ? c : (x->len > y->len) - (x->len < y->len);
}

static int show_workers(lp_redis *r, FILE *out, long long now) {
  redisReply *all = lp_redis_cmdf(r, "HGETALL lp:workers");
  if (!all || all->type != REDIS_REPLY_ARRAY) {
    int rc = broker_error(r, "HGETALL lp:workers", all);
    if (all) freeReplyObject(all);
    return rc;
  }
  size_t n = all->elements / 2;
  if (n == 0) {
    fprintf(out, "no workers\n");
    freeReplyObject(all);
    return 0;
  }
  /* By name: the hash's own order changes as it grows. */
  worker_entry *names = malloc(n * sizeof *names);
  table t = {6, worker_head, worker_align, NULL, 0, 0, 0};
  if (names) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
      if (all->element[2 * i]->type == REDIS_REPLY_STRING)
        names[m++] = (worker_entry){all->element[2 * i], all->element[2 * i + 1]};
    qsort(names, m, sizeof *names, by_name);
    for (size_t i = 0; i < m; i++) worker_row(&t, names[i].name, names[i].entry, now);
  }
  int rc = 0;
  if (!names || t.oom) {
    fprintf(stderr, "luapool: status: out of memory\n");
    rc = EXIT_BROKER;
  } else {
    table_print(out, &t);
  }
  table_free(&t);
  free(names);
  freeReplyObject(all);
  return rc;
}

int lp_status_main(const char *url_text, FILE *out) {
  lp_broker_url url;
  char err[1024];
  if (lp_broker_url_parse(url_text, &url, err, sizeof err) != 0) {
    fprintf(stderr, "luapool: %s\n", err);
    return EXIT_BAD_URL;
  }
  lp_redis r;
  if (lp_redis_open(&r, &url, TIMEOUT_S, 0) != 0) {
    fprintf(stderr, "luapool: %s\n", r.err);
    return EXIT_BROKER;
  }
  char shown[512];
  lp_broker_url_show(&url, shown, sizeof shown);
  fprintf(out, "broker %s\n\n", shown);
  long long now = now_ms();
  int rc = show_runs(&r, out, now);
  if (rc == 0) {
    fputc('\n', out);
    rc = show_workers(&r, out, now);
  }
  lp_redis_close(&r);
  return rc;
}
