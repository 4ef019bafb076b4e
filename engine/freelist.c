/*
 * freelist.c - see freelist.h.
 */
#include "freelist.h"

#include <stdlib.h>

#define KEEP 8192 /* objects a local list keeps; beyond, they go to free() */

static inline void *link_of(void *p) { return *(void **)p; }
static inline void set_link(void *p, void *next) { *(void **)p = next; }

void lp_fl_init(lp_freelist *fl, size_t size) {
  fl->local = NULL;
  fl->nlocal = 0;
  atomic_init(&fl->remote, NULL);
  fl->size = size;
}

void *lp_fl_alloc(lp_freelist *fl, size_t size) {
  if (!fl) return malloc(size);
  if (!fl->local) {
    fl->local = atomic_exchange_explicit(&fl->remote, NULL, memory_order_acquire);
    fl->nlocal = 0;
    for (void *p = fl->local; p; p = link_of(p)) fl->nlocal++;
  }
  void *p = fl->local;
  if (!p) return malloc(fl->size);
  fl->local = link_of(p);
  fl->nlocal--;
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
    if (self->nlocal >= KEEP) {
      free(p);
      return;
    }
    set_link(p, self->local);
    self->local = p;
    self->nlocal++;
  } else {
    lp_fl_free_chain(home, p, p);
  }
}

void lp_fl_drain(lp_freelist *fl) {
  void *p = fl->local;
  while (p) {
    void *next = link_of(p);
    free(p);
    p = next;
  }
  p = atomic_exchange(&fl->remote, NULL);
  while (p) {
    void *next = link_of(p);
    free(p);
    p = next;
  }
  fl->local = NULL;
  fl->nlocal = 0;
}
