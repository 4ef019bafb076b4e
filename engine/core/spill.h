/*
 * spill.h - records held on disk: the files records go to once the memory
 * bound of held records (lp_report.bound, --hold) is passed, and the way
 * they are read back.
 *
 * A spill file is made under $TMPDIR (or /tmp) and unlinked at once, so it
 * is gone when the run ends however it ends. Records are added by one
 * thread (a worker: lp_task_cache.spill), or by any thread without a file
 * of its own (r->shared), or by the host (priority order's sorted runs,
 * runs.c). Writes are buffered; `flushed` says how much of the file a
 * reader may read, and is published after the write that put it there.
 * The buffer is under `lock`, so the host can write out a file whose
 * records it needs now, whatever its writer is doing: a worker writes its
 * buffer out when idle or after 2 ms, but the last records of a run must
 * not wait for a worker that will never look again.
 */
#ifndef LP_SPILL_H
#define LP_SPILL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct lp_report;
struct lp_record;

#define LP_SPILL_BUF ((size_t)64 * 1024)

typedef struct lp_spill_file {
  int fd;
  _Atomic int64_t flushed; /* bytes in the file, readable */
  int64_t end;             /* flushed + buffered: where the next record goes */
  char *buf;               /* the buffer, `len` bytes: these four under `lock` */
  size_t len;
  double since; /* lp_now() of the oldest unflushed byte */
  pthread_mutex_t lock;
  struct lp_spill_file *next; /* every file of a report (lp_report.files) */
} lp_spill_file;

/* How a record is laid out in a spill file: this header, then its bytes. */
typedef struct lp_spill_hdr {
  uint64_t task;
  uint64_t root;
  uint64_t rank; /* priority order's runs: its place in tree order */
  double priority;
  uint32_t len;
  int32_t fn;
  int32_t kind;
  int32_t pad;
} lp_spill_hdr;

/* The bytes rec takes in a spill file. */
static inline int64_t lp_spill_size(size_t len) { return (int64_t)(sizeof(lp_spill_hdr) + len); }

/* A new spill file of r's (kept in r->files, closed by lp_spill_close_all).
 * NULL when it cannot be made: r's spill error says why then. */
lp_spill_file *lp_spill_new(struct lp_report *r);
/* Appends rec (with rank) to f's buffer, writing the buffer out when full;
 * *at (if given) gets the record's offset. 0, or -1 after a failed write
 * (r's spill error says why; the record stays with the caller). */
int lp_spill_put(struct lp_report *r, lp_spill_file *f, const struct lp_record *rec, uint64_t rank,
                 int64_t *at);
/* Writes out what f has buffered: 0 or -1 as lp_spill_put. */
int lp_spill_flush(struct lp_report *r, lp_spill_file *f);
/* A worker's file, if it has buffered records: written out when `idle`
 * (nothing else to do) or when they have waited 2 ms (a reader may be
 * waiting for them; a file written out per task would cost a system call
 * per task). */
void lp_spill_tick(struct lp_report *r, lp_spill_file *f, int idle);
void lp_spill_close_all(struct lp_report *r);

/* Records the first spill failure of the run and cancels it: the run ends
 * with exit 1 and this message rather than with records missing. */
void lp_spill_fail(struct lp_report *r, const char *what, int err);

/* Reads records back, from off up to end, through a buffer. */
typedef struct lp_spill_reader {
  lp_spill_file *f;
  int64_t off; /* next record */
  int64_t end;
  char *buf;
  size_t cap;
  int64_t boff; /* file offset of buf[0] */
  size_t blen;
} lp_spill_reader;

/* cap: the buffer's size (the merge of many runs uses small ones). */
int lp_spill_reader_init(lp_spill_reader *rd, lp_spill_file *f, int64_t off, int64_t end,
                         size_t cap);
void lp_spill_reader_free(lp_spill_reader *rd);
/* The next record, in `scratch` (grown as needed; the caller frees it), or
 * NULL at the end or on a read error (r's spill error says which). */
struct lp_record *lp_spill_next(struct lp_report *r, lp_spill_reader *rd,
                                struct lp_record **scratch, size_t *scap, uint64_t *rank);

#endif
