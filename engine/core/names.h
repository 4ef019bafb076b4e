/*
 * names.h - interned task function names, shared by every worker.
 *
 * Tasks carry their function as a small integer; the name behind it is
 * needed only to resolve it in a worker state the first time, and to report.
 */
#ifndef LP_NAMES_H
#define LP_NAMES_H

#include <pthread.h>
#include <stddef.h>

#define LP_NAMES_BLOCK 1024
#define LP_NAMES_MAXBLOCKS 1024

typedef struct lp_names {
  pthread_mutex_t lock;              /* guards adding; reading an id once known needs no lock */
  char **blocks[LP_NAMES_MAXBLOCKS]; /* id -> name, in blocks that never move */
  int count;
  int *slots; /* open-addressing hash of ids, -1 empty; guarded by lock */
  int nslots;
} lp_names;

int lp_names_init(lp_names *n);
void lp_names_free(lp_names *n);
/* The id of a name, adding it if new; -1 when out of memory or full. */
int lp_names_intern(lp_names *n, const char *s, size_t len);
/* The name of an id obtained from lp_names_intern. */
const char *lp_names_get(const lp_names *n, int id);

#endif
