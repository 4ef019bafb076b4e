/*
 * freelist.c - see freelist.h.
 */
#include "freelist.h"

#include <stdlib.h>

static inline void *link_of(void *p) { return *(void **)p; }
static inline void set_link(void *p, void *next) { *(void **)p = next; }

void lp_fl_init(lp_freelist *fl, size_t size) {
  fl->local = NULL;
  atomic_init(&fl->remote, NULL);
  fl->slabs = NULL;
  /* Room for the link in a free object, and 16-byte alignment. */
  fl->size = (size < sizeof(void *) ? sizeof(void *) : size + 15) & ~(size_t)15;
}

static int grow(lp_freelist *fl) {
  char *slab = malloc(16 + fl->size * LP_FL_SLAB);
  if (!slab) return -1;
  set_link(slab, fl->slabs);
  fl->slabs = slab;
  for (int i = LP_FL_SLAB - 1; i >= 0; i--) {
    void *p = slab + 16 + (size_t)i * fl->size;
    set_link(p, fl->local);
    fl->local = p;
  }
  return 0;
}

void *lp_fl_alloc(lp_freelist *fl, size_t size) {
  if (!fl) return malloc(size);
  if (!fl->local) fl->local = atomic_exchange_explicit(&fl->remote, NULL, memory_order_acquire);
  if (!fl->local && grow(fl) != 0) return NULL;
  void *p = fl->local;
  fl->local = link_of(p);
  return p;
}

void lp_fl_free_chain(lp_freelist *home, void *first, void *last) {
  void *head = atomic_load_explicit(&home->remote, memory_order_relaxed);
  do set_link(last, head);
  while (!atomic_compare_exchange_weak_explicit(&home->remote, &head, first, memory_order_release,
                                                memory_order_relaxed));
}

void lp_fl_free(lp_freelist *home, lp_freelist *self, void *p) {
  if (!home) {
    free(p);
  } else if (home == self) {
    set_link(p, self->local);
    self->local = p;
  } else {
    lp_fl_free_chain(home, p, p);
  }
}

void lp_fl_drain(lp_freelist *fl) {
  void *s = fl->slabs;
  while (s) {
    void *next = link_of(s);
    free(s);
    s = next;
  }
  fl->slabs = NULL;
  fl->local = NULL;
  atomic_store(&fl->remote, NULL);
}
