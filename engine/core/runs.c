/*
 * runs.c - priority order's held records: all of them wait for the end of
 * the run (a task may emit at any priority at any time, so no record is
 * known to be the lowest before then). Host-only.
 *
 * Records are held in memory, in tree order (their rank); once they pass
 * half the memory bound they are sorted and written to the host's spill
 * file as one run. At the end the runs, and what is left in memory, are
 * merged: the lowest priority first, ties in tree order (by rank), which
 * is the order one sort of everything would give.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "spill.h"

static int by_priority(const void *a, const void *b) {
  const lp_held *x = a, *y = b;
  if (x->rec->priority != y->rec->priority) return x->rec->priority < y->rec->priority ? -1 : 1;
  return x->rank < y->rank ? -1 : x->rank > y->rank;
}

/* Frees a held record: the cursor's last record may still be its
 * position, freed when the cursor moves on (or at the end). */
static void drop(lp_report *r, lp_record *rec) {
  if (&rec->item == r->pos) {
    rec->held = 0; /* counted when freed */
    return;
  }
  lp_hold_host(r, -lp_record_bytes(rec));
  free(rec);
}

/* Writes the held records out as one sorted run. 0, or -1 (they stay). */
static int write_run(lp_report *r) {
  if (!r->runfile && !(r->runfile = lp_spill_new(r))) return -1;
  if (r->nruns == r->capruns) {
    size_t cap = r->capruns ? r->capruns * 2 : 16;
    lp_run *runs = realloc(r->runs, cap * sizeof *runs);
    if (!runs) return -1;
    r->runs = runs;
    r->capruns = cap;
  }
  qsort(r->held, r->nheld, sizeof *r->held, by_priority);
  lp_run run = {r->runfile->end, 0};
  for (size_t i = 0; i < r->nheld; i++)
    if (lp_spill_put(r, r->runfile, r->held[i].rec, r->held[i].rank, NULL) != 0) return -1;
  if (lp_spill_flush(r, r->runfile) != 0) return -1;
  run.end = r->runfile->end;
  r->runs[r->nruns++] = run;
  size_t fresh = 0; /* a record read back from a sequence's spill is counted once */
  for (size_t i = 0; i < r->nheld; i++) fresh += !r->held[i].rec->spilled;
  atomic_fetch_add_explicit(&r->spilled, fresh, memory_order_relaxed);
  for (size_t i = 0; i < r->nheld; i++) drop(r, r->held[i].rec);
  r->nheld = 0;
  r->heldbytes = 0;
  return 0;
}

void lp_runs_hold(lp_report *r, lp_record *rec) {
  if (r->nheld == r->capheld) {
    size_t cap = r->capheld ? r->capheld * 2 : 256;
    lp_held *h = realloc(r->held, cap * sizeof *h);
    if (!h) {
      lp_record_deliver(r, rec); /* out of memory: out of order rather than lost */
      rec->held = 0;
      return;
    }
    r->held = h;
    r->capheld = cap;
  }
  rec->held = 1;
  r->held[r->nheld].rec = rec;
  r->held[r->nheld].rank = r->rank++;
  r->nheld++;
  r->heldbytes += lp_record_bytes(rec);
  if (r->heldbytes > r->bound / 2 && !atomic_load(&r->spill_failed)) write_run(r);
}

/* One run being merged: its reader and the record it is at. */
typedef struct head {
  lp_spill_reader rd;
  lp_record *rec; /* NULL: the run is over */
  size_t cap;
  uint64_t rank;
} head;

static int head_less(const head *a, const head *b) {
  if (a->rec->priority != b->rec->priority) return a->rec->priority < b->rec->priority;
  return a->rank < b->rank;
}

static void sift_down(head **heap, size_t n, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, m = i;
    if (l < n && head_less(heap[l], heap[m])) m = l;
    if (l + 1 < n && head_less(heap[l + 1], heap[m])) m = l + 1;
    if (m == i) return;
    head *t = heap[i];
    heap[i] = heap[m];
    heap[m] = t;
    i = m;
  }
}

/* Merges every run; what was in memory has been written as the last. */
static long merge(lp_report *r, int deliver) {
  size_t n = r->nruns;
  head *heads = calloc(n, sizeof *heads);
  head **heap = calloc(n, sizeof *heap);
  long count = 0;
  if (!heads || !heap) {
    lp_spill_fail(r, "cannot merge", ENOMEM);
    goto out;
  }
  /* 16 MB of buffers whatever the number of runs, 4 KB at least each. */
  size_t cap = ((size_t)16 << 20) / n;
  if (cap > LP_SPILL_BUF) cap = LP_SPILL_BUF;
  if (cap < 4096) cap = 4096;
  size_t nheap = 0;
  for (size_t i = 0; i < n; i++) {
    if (lp_spill_reader_init(&heads[i].rd, r->runfile, r->runs[i].off, r->runs[i].end, cap)) {
      lp_spill_fail(r, "cannot merge", ENOMEM);
      goto out;
    }
    if (lp_spill_next(r, &heads[i].rd, &heads[i].rec, &heads[i].cap, &heads[i].rank))
      heap[nheap++] = &heads[i];
  }
  for (size_t i = nheap; i-- > 0;) sift_down(heap, nheap, i);
  while (nheap) {
    head *h = heap[0];
    if (deliver) lp_record_deliver(r, h->rec);
    count++;
    if (!lp_spill_next(r, &h->rd, &h->rec, &h->cap, &h->rank)) heap[0] = heap[--nheap];
    sift_down(heap, nheap, 0);
  }
out:
  if (heads)
    for (size_t i = 0; i < n; i++) {
      lp_spill_reader_free(&heads[i].rd);
      free(heads[i].rec);
    }
  free(heads);
  free(heap);
  r->nruns = 0;
  return count;
}

long lp_runs_release(lp_report *r, int deliver) {
  long n = 0;
  if (r->nruns && deliver) {
    /* Should the last run fail to be written, what stays follows the merge
     * unmerged: the run fails with the spill error then. */
    if (r->nheld) write_run(r);
    n = merge(r, 1);
  }
  r->nruns = 0;
  if (deliver && r->nheld > 1) qsort(r->held, r->nheld, sizeof *r->held, by_priority);
  for (size_t i = 0; i < r->nheld; i++)
    if (deliver) lp_record_deliver(r, r->held[i].rec);
  for (size_t i = 0; i < r->nheld; i++) drop(r, r->held[i].rec);
  n += (long)r->nheld;
  r->nheld = 0;
  r->heldbytes = 0;
  return n;
}
