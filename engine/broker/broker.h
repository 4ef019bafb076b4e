/*
 * broker.h - a run through Redis (internal to engine/broker/): the names
 * of a run's keys (KEYS.md), how a task and its outcome are written into
 * them, and the two sides: the place of the engine that submits the run
 * (place.c) and the worker that runs its tasks (bridge.c).
 *
 * A task travels as an entry of the run's stream: `k` its key, `x` the
 * task (an EXPORT frame of the wire: function, depth, priority, time
 * limit, retries, arguments), `o` the worker whose inbox hears its end.
 * Its outcome is wire frames too: the RECORDs of its subtree in the order
 * the report needs, then its RESULT. Both are read with the wire's
 * checked readers: a malformed entry fails one task, never a worker.
 */
#ifndef LP_BROKER_H
#define LP_BROKER_H

#include <stddef.h>
#include <stdint.h>

#include "pack.h"
#include "redis.h"
#include "wire.h"

#define LP_RUN_ID_LEN 16
#define LP_BROKER_GROUP "w"

/* The keys of run `run` (KEYS.md). */
typedef struct lp_runkeys {
  char run[LP_RUN_ID_LEN + 1];
  char meta[48], src[48], q[48], res[48], n[48], ctr[48], fail[48], wk[48];
} lp_runkeys;

void lp_runkeys_init(lp_runkeys *k, const char *run);
/* The inbox of worker `name` in run k: "lp:{RUN}:in:NAME". */
void lp_runkeys_inbox(const lp_runkeys *k, const char *name, char *out, size_t n);

/* The task of a stream entry (field `x`, an EXPORT frame: wire.h): 0, or
 * -1 for bytes that are not one. */
int lp_broker_task_get(const char *p, size_t n, lp_wire_task *t);

/* b = one packed string, a failed task's message: 0 or -1. */
int lp_broker_text(lp_buf *b, const char *text);

/* A name for this process among the broker's workers: "host:pid:rand". */
void lp_broker_name(char *out, size_t n);
/* Milliseconds since the epoch. */
int64_t lp_broker_ms(void);

#endif
