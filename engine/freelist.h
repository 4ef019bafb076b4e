/*
 * freelist.h - per-worker caches of fixed-size objects freed on any thread.
 *
 * Task records and report nodes are made by one worker and often freed by
 * another (or by the host); glibc's malloc handles that with arena locks
 * and consolidation that showed up as a fifth of the run time. Each worker
 * keeps its own list (`local`, touched only by the owner); an object freed
 * elsewhere goes back to its home's `remote` stack with one CAS, and the
 * owner takes the whole stack when its local list runs dry.
 */
#ifndef LP_FREELIST_H
#define LP_FREELIST_H

#include <stdatomic.h>
#include <stddef.h>

typedef struct lp_freelist {
  void *local; /* owner-only; each free object's first word links the next */
  int nlocal;
  _Atomic(void *) remote;
  size_t size;
} lp_freelist;

void lp_fl_init(lp_freelist *fl, size_t size);
/* An object of fl's size, from fl if it has one (fl may be NULL). */
void *lp_fl_alloc(lp_freelist *fl, size_t size);
/* Returns p to its home list. `self` is the caller's own list of the same
 * kind (NULL if the caller is not a worker): the owner pushes locally. */
void lp_fl_free(lp_freelist *home, lp_freelist *self, void *p);
/* Returns a chain first..last (linked through first words) to home at once. */
void lp_fl_free_chain(lp_freelist *home, void *first, void *last);
/* Frees everything the list holds. */
void lp_fl_drain(lp_freelist *fl);

#endif
