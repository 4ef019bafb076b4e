/*
 * attach.h - a run on a broker, as `luapool attach` opens an engine on it
 * (attach.c).
 */
#ifndef LP_ATTACH_H
#define LP_ATTACH_H

#include <stddef.h>

typedef struct lp_attach_info {
  int order; /* LUAPOOL_ORDER_* */
  char *chunkname;
  char *source;
  size_t source_len;
} lp_attach_info;

/* Reads run `run` on the broker at url: 0, or the exit status (1: the
 * broker cannot be had; 2: a bad URL, a bad id, no such run) with the
 * message in err. */
int lp_attach_fetch(const char *url, const char *run, lp_attach_info *out, char *err, size_t n);
void lp_attach_free(lp_attach_info *a);

#endif
