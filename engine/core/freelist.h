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

/* Objects are carved from slabs of LP_FL_SLAB and never returned to malloc
 * one by one: a run's high-water mark stays allocated until the engine
 * closes, and in exchange an allocation is a pointer pop. */
#define LP_FL_SLAB 64

typedef struct lp_freelist {
  void *local; /* owner-only; each free object's first word links the next */
  _Atomic(void *) remote;
  void *slabs; /* owner-only list of slabs, freed by lp_fl_drain */
  size_t size;
} lp_freelist;

void lp_fl_init(lp_freelist *fl, size_t size);
/* An object of `size` bytes: from fl, or from malloc when fl is NULL. */
void *lp_fl_alloc(lp_freelist *fl, size_t size);
/* Returns p to its home list (home NULL: p came from malloc). `self` is the
 * caller's own list of the same kind, or NULL: the owner pushes locally. */
void lp_fl_free(lp_freelist *home, lp_freelist *self, void *p);
/* Returns a chain first..last (linked through first words) to home at once. */
void lp_fl_free_chain(lp_freelist *home, void *first, void *last);
/* Frees the slabs (every object of the list, free or not: the engine is
 * closing and nothing is in use any more). */
void lp_fl_drain(lp_freelist *fl);

#endif
