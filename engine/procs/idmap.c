/*
 * idmap.c - tasks by id, open addressing with linear probing.
 */
#include "idmap.h"

#include <stdlib.h>

static size_t id_hash(uint64_t id, size_t mask) {
  return (size_t)(id * 0x9E3779B97F4A7C15ull) & mask;
}

int lp_idmap_put(lp_idmap *m, lp_task *t) {
  if ((m->n + 1) * 2 > m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 256;
    lp_task **s = calloc(cap, sizeof *s);
    if (!s) return -1;
    for (size_t i = 0; i < m->cap; i++) {
      lp_task *x = m->slot[i];
      if (!x) continue;
      size_t j = id_hash(x->id, cap - 1);
      while (s[j]) j = (j + 1) & (cap - 1);
      s[j] = x;
    }
    free(m->slot);
    m->slot = s;
    m->cap = cap;
  }
  size_t j = id_hash(t->id, m->cap - 1);
  while (m->slot[j]) j = (j + 1) & (m->cap - 1);
  m->slot[j] = t;
  m->n++;
  return 0;
}

lp_task *lp_idmap_get(lp_idmap *m, uint64_t id) {
  if (!m->cap) return NULL;
  for (size_t j = id_hash(id, m->cap - 1); m->slot[j]; j = (j + 1) & (m->cap - 1))
    if (m->slot[j]->id == id) return m->slot[j];
  return NULL;
}

lp_task *lp_idmap_take(lp_idmap *m, uint64_t id) {
  if (!m->cap) return NULL;
  size_t mask = m->cap - 1, j = id_hash(id, mask);
  while (m->slot[j] && m->slot[j]->id != id) j = (j + 1) & mask;
  lp_task *t = m->slot[j];
  if (!t) return NULL;
  /* Backward-shift deletion keeps every probe chain whole. */
  size_t hole = j;
  for (size_t k = (j + 1) & mask; m->slot[k]; k = (k + 1) & mask) {
    size_t home = id_hash(m->slot[k]->id, mask);
    if (((k - home) & mask) >= ((k - hole) & mask)) {
      m->slot[hole] = m->slot[k];
      hole = k;
    }
  }
  m->slot[hole] = NULL;
  m->n--;
  return t;
}
