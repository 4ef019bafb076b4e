/*
 * keys.c - a run's key names and the bytes of a task as it travels
 * (broker.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "wire.h"

void lp_runkeys_init(lp_runkeys *k, const char *run) {
  snprintf(k->run, sizeof k->run, "%s", run);
  snprintf(k->meta, sizeof k->meta, "lp:{%s}:meta", run);
  snprintf(k->src, sizeof k->src, "lp:{%s}:src", run);
  snprintf(k->q, sizeof k->q, "lp:{%s}:q", run);
  snprintf(k->res, sizeof k->res, "lp:{%s}:res", run);
  snprintf(k->n, sizeof k->n, "lp:{%s}:n", run);
  snprintf(k->ctr, sizeof k->ctr, "lp:{%s}:ctr", run);
  snprintf(k->fail, sizeof k->fail, "lp:{%s}:fail", run);
  snprintf(k->wk, sizeof k->wk, "lp:{%s}:wk", run);
}

void lp_runkeys_inbox(const lp_runkeys *k, const char *name, char *out, size_t n) {
  snprintf(out, n, "lp:{%s}:in:%s", k->run, name);
}

int lp_broker_task_get(const char *p, size_t n, lp_wire_task *t) {
  lp_wire_msg m;
  uint64_t id;
  if (lp_wire_frame(p, n, &m) != (long)n || lp_wire_get_export(&m, &id, t) != 0 || m.p != m.end ||
      t->fnlen == 0 || t->fnlen > 255)
    return -1;
  return 0;
}

void lp_broker_name(char *out, size_t n) {
  char host[64] = "host";
  gethostname(host, sizeof host - 1);
  host[sizeof host - 1] = 0;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  unsigned r = (unsigned)ts.tv_nsec ^ (unsigned)getpid() * 2654435761u;
  snprintf(out, n, "%s:%d:%04x", host, (int)getpid(), r & 0xffff);
}

int64_t lp_broker_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int lp_broker_text(lp_buf *b, const char *text) {
  return lp_pack_begin(b, 1) != 0 || lp_pack_put_string(b, text, strlen(text)) != 0 ? -1 : 0;
}
