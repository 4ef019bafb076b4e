/*
 * names.c - interned task function names.
 *
 * Workers meet the same few names millions of times; each keeps its own
 * Lua-side cache from name to id, so this table is locked only the first
 * time a worker sees a name.
 */
#include "names.h"

#include <stdlib.h>
#include <string.h>

static unsigned hash(const char *s, size_t len) {
  unsigned h = 2166136261u;
  for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

int lp_names_init(lp_names *n) {
  memset(n, 0, sizeof *n);
  n->nslots = 64;
  n->slots = malloc(sizeof(int) * (size_t)n->nslots);
  if (!n->slots) return -1;
  for (int i = 0; i < n->nslots; i++) n->slots[i] = -1;
  pthread_mutex_init(&n->lock, NULL);
  return 0;
}

void lp_names_free(lp_names *n) {
  for (int id = 0; id < n->count; id++) free(n->blocks[id / LP_NAMES_BLOCK][id % LP_NAMES_BLOCK]);
  for (int b = 0; b < LP_NAMES_MAXBLOCKS && n->blocks[b]; b++) free(n->blocks[b]);
  free(n->slots);
  pthread_mutex_destroy(&n->lock);
  memset(n, 0, sizeof *n);
}

const char *lp_names_get(const lp_names *n, int id) {
  return n->blocks[id / LP_NAMES_BLOCK][id % LP_NAMES_BLOCK];
}

static int grow_slots(lp_names *n) {
  int nslots = n->nslots * 2;
  int *slots = malloc(sizeof(int) * (size_t)nslots);
  if (!slots) return -1;
  for (int i = 0; i < nslots; i++) slots[i] = -1;
  for (int id = 0; id < n->count; id++) {
    const char *s = lp_names_get(n, id);
    unsigned i = hash(s, strlen(s)) & (unsigned)(nslots - 1);
    while (slots[i] >= 0) i = (i + 1) & (unsigned)(nslots - 1);
    slots[i] = id;
  }
  free(n->slots);
  n->slots = slots;
  n->nslots = nslots;
  return 0;
}

int lp_names_intern(lp_names *n, const char *s, size_t len) {
  int id = -1;
  pthread_mutex_lock(&n->lock);
  unsigned mask = (unsigned)(n->nslots - 1);
  unsigned i = hash(s, len) & mask;
  for (; n->slots[i] >= 0; i = (i + 1) & mask) {
    const char *have = lp_names_get(n, n->slots[i]);
    if (strlen(have) == len && memcmp(have, s, len) == 0) {
      id = n->slots[i];
      goto out;
    }
  }
  if (n->count >= LP_NAMES_BLOCK * LP_NAMES_MAXBLOCKS) goto out;
  int b = n->count / LP_NAMES_BLOCK;
  if (!n->blocks[b] && !(n->blocks[b] = calloc(LP_NAMES_BLOCK, sizeof(char *)))) goto out;
  char *copy = malloc(len + 1);
  if (!copy) goto out;
  memcpy(copy, s, len);
  copy[len] = '\0';
  id = n->count;
  n->blocks[b][id % LP_NAMES_BLOCK] = copy;
  n->slots[i] = id;
  /* Publish the name before the count so lp_names_get on any id below count
   * sees a complete string (readers got the id through a lock anyway). */
  n->count++;
  if (n->count * 2 > n->nslots && grow_slots(n) != 0) {
    /* The table still works, only fuller; nothing to undo. */
  }
out:
  pthread_mutex_unlock(&n->lock);
  return id;
}
