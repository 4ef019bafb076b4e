/*
 * spill.c - spill files: made, written, read back, closed (spill.h says
 * who writes which file).
 */
#include "spill.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "report.h"
#include "timer.h"

void lp_spill_fail(lp_report *r, const char *what, int err) {
  char msg[512];
  const char *dir = getenv("TMPDIR");
  snprintf(msg, sizeof msg, "%s a spill file in %s%s: %s (records past --hold go to disk)", what,
           dir && *dir ? dir : "/tmp", dir && *dir ? " ($TMPDIR)" : "", strerror(err));
  pthread_mutex_lock(&r->fail_lock);
  int first = r->spill_error == NULL;
  if (first) r->spill_error = strdup(msg);
  atomic_store(&r->spill_failed, 1);
  pthread_mutex_unlock(&r->fail_lock);
  if (first) lp_engine_cancel(r->eng);
}

lp_spill_file *lp_spill_new(lp_report *r) {
  const char *dir = getenv("TMPDIR");
  if (!dir || !*dir) dir = "/tmp";
  size_t n = strlen(dir) + sizeof "/luapool-spill-XXXXXX";
  char *path = malloc(n);
  lp_spill_file *f = calloc(1, sizeof *f);
  char *buf = malloc(LP_SPILL_BUF);
  if (!path || !f || !buf) {
    free(path), free(f), free(buf);
    lp_spill_fail(r, "cannot make", ENOMEM);
    return NULL;
  }
  snprintf(path, n, "%s/luapool-spill-XXXXXX", dir);
  int fd = mkstemp(path);
  int err = errno;
  if (fd >= 0) unlink(path); /* nothing left behind, whatever ends the run */
  free(path);
  if (fd < 0) {
    free(f), free(buf);
    lp_spill_fail(r, "cannot make", err);
    return NULL;
  }
  f->fd = fd;
  f->buf = buf;
  atomic_init(&f->flushed, 0);
  pthread_mutex_init(&f->lock, NULL);
  pthread_mutex_lock(&r->fail_lock);
  f->next = r->files;
  r->files = f;
  pthread_mutex_unlock(&r->fail_lock);
  return f;
}

/* Writes n bytes at the end of the file. 0, or -1 (the run's spill error
 * set). A short write past a size limit leaves part of a record there:
 * nothing is read past `flushed`, so the part is never seen. */
static int write_all(lp_report *r, lp_spill_file *f, const char *p, size_t n, int64_t at) {
  size_t done = 0;
  while (done < n) {
    ssize_t k = pwrite(f->fd, p + done, n - done, at + (int64_t)done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      lp_spill_fail(r, "cannot write", k < 0 ? errno : ENOSPC);
      return -1;
    }
    done += (size_t)k;
  }
  return 0;
}

/* Under f->lock. */
static int flush_locked(lp_report *r, lp_spill_file *f) {
  if (f->len && write_all(r, f, f->buf, f->len, f->end - (int64_t)f->len) != 0) return -1;
  f->len = 0;
  atomic_store_explicit(&f->flushed, f->end, memory_order_release);
  return 0;
}

int lp_spill_flush(lp_report *r, lp_spill_file *f) {
  pthread_mutex_lock(&f->lock);
  int rc = flush_locked(r, f);
  pthread_mutex_unlock(&f->lock);
  return rc;
}

static int put_locked(lp_report *r, lp_spill_file *f, const lp_record *rec, uint64_t rank) {
  lp_spill_hdr h;
  memset(&h, 0, sizeof h);
  h.task = rec->task;
  h.root = rec->root;
  h.rank = rank;
  h.priority = rec->priority;
  h.len = (uint32_t)rec->len;
  h.fn = rec->fn;
  h.kind = rec->kind;
  size_t need = sizeof h + rec->len;
  if (atomic_load_explicit(&r->spill_failed, memory_order_relaxed)) return -1;
  if (f->len + need > LP_SPILL_BUF && flush_locked(r, f) != 0) return -1;
  if (need > LP_SPILL_BUF) { /* larger than the buffer: out on its own, then readable */
    if (write_all(r, f, (const char *)&h, sizeof h, f->end) != 0 ||
        write_all(r, f, rec->data, rec->len, f->end + (int64_t)sizeof h) != 0)
      return -1;
    f->end += (int64_t)need;
    atomic_store_explicit(&f->flushed, f->end, memory_order_release);
    return 0;
  }
  if (f->len == 0) f->since = lp_now();
  memcpy(f->buf + f->len, &h, sizeof h);
  memcpy(f->buf + f->len + sizeof h, rec->data, rec->len);
  f->len += need;
  f->end += (int64_t)need;
  return 0;
}

int lp_spill_put(lp_report *r, lp_spill_file *f, const lp_record *rec, uint64_t rank, int64_t *at) {
  pthread_mutex_lock(&f->lock);
  if (at) *at = f->end;
  int rc = put_locked(r, f, rec, rank);
  pthread_mutex_unlock(&f->lock);
  return rc;
}

void lp_spill_tick(lp_report *r, lp_spill_file *f, int idle) {
  if (!f) return;
  pthread_mutex_lock(&f->lock);
  if (f->len && (idle || lp_now() - f->since > 0.002)) flush_locked(r, f);
  pthread_mutex_unlock(&f->lock);
}

void lp_spill_close_all(lp_report *r) {
  while (r->files) {
    lp_spill_file *f = r->files;
    r->files = f->next;
    close(f->fd);
    pthread_mutex_destroy(&f->lock);
    free(f->buf);
    free(f);
  }
}

/* ---- reading back ---- */

int lp_spill_reader_init(lp_spill_reader *rd, lp_spill_file *f, int64_t off, int64_t end,
                         size_t cap) {
  memset(rd, 0, sizeof *rd);
  rd->f = f;
  rd->off = off;
  rd->end = end;
  rd->cap = cap;
  rd->buf = malloc(cap);
  return rd->buf ? 0 : -1;
}

void lp_spill_reader_free(lp_spill_reader *rd) {
  free(rd->buf);
  rd->buf = NULL;
}

/* Makes [off, off + n) of the file readable at rd->buf + (off - boff), or
 * copies it to dst when it is larger than the buffer. */
static int fill(lp_spill_reader *rd, int64_t off, size_t n, char *dst) {
  if (off >= rd->boff && off + (int64_t)n <= rd->boff + (int64_t)rd->blen) {
    if (dst) memcpy(dst, rd->buf + (off - rd->boff), n);
    return 0;
  }
  char *to = dst && n > rd->cap ? dst : rd->buf;
  size_t want = to == dst ? n : rd->cap;
  int64_t left = rd->end - off;
  if (to == rd->buf && (int64_t)want > left) want = (size_t)left;
  size_t got = 0;
  while (got < n) {
    ssize_t k = pread(rd->f->fd, to + got, want - got, off + (int64_t)got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return -1;
    got += (size_t)k;
  }
  if (to == rd->buf) {
    rd->boff = off;
    rd->blen = got;
    if (dst) memcpy(dst, rd->buf, n);
  } else {
    rd->blen = 0;
  }
  return 0;
}

lp_record *lp_spill_next(lp_report *r, lp_spill_reader *rd, lp_record **scratch, size_t *scap,
                         uint64_t *rank) {
  lp_spill_hdr h;
  if (rd->off >= rd->end) return NULL;
  if (fill(rd, rd->off, sizeof h, (char *)&h) != 0) goto bad;
  if (h.len > rd->end - rd->off - (int64_t)sizeof h) goto bad;
  size_t need = sizeof(lp_record) + h.len + 1;
  if (need > *scap) {
    lp_record *s = realloc(*scratch, need);
    if (!s) goto bad;
    *scratch = s;
    *scap = need;
  }
  lp_record *rec = *scratch;
  if (fill(rd, rd->off + (int64_t)sizeof h, h.len, rec->data) != 0) goto bad;
  atomic_init(&rec->item.next, NULL);
  rec->item.kind = LP_ITEM_RECORD;
  rec->kind = h.kind;
  rec->task = h.task;
  rec->root = h.root;
  rec->fn = h.fn;
  rec->priority = h.priority;
  rec->held = 0;
  rec->spilled = 1;
  rec->len = h.len;
  rec->data[h.len] = '\0';
  if (rank) *rank = h.rank;
  rd->off += lp_spill_size(h.len);
  return rec;
bad:
  lp_spill_fail(r, "cannot read back", errno ? errno : EIO);
  rd->off = rd->end;
  return NULL;
}
