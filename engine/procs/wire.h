/*
 * wire.h - messages between the engine and its worker processes.
 *
 * A message on a pipe is a frame:
 *   u32  length of what follows (little-endian), at most LP_WIRE_MAXFRAME
 *   u8   type (LP_MSG_*)
 *   ...  fields, in the order the type defines, each one of:
 *        u64 (8 bytes LE), f64 (8 bytes, IEEE), bytes (u32 length + data)
 * Frames are written back to back into one buffer and the buffer goes out
 * in one write: many small tasks cost one system call. The reader never
 * trusts a frame: every length is checked against the bytes present, and a
 * malformed frame ends the connection with a message, never a crash.
 */
#ifndef LP_WIRE_H
#define LP_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "pack.h"

#define LP_WIRE_MAXFRAME (256u << 20) /* a frame larger than this is refused */

enum {
  /* engine -> worker process */
  LP_MSG_INIT = 1, /* u64 slot, u64 threads, u64 order, u64 memory_limit, u64 id_base,
                      f64 task_timeout, bytes chunkname, bytes script, bytes pool,
                      u64 trace (1: keep trace events and send them at the end),
                      u64 retries (the default of the subtasks made there) */
  LP_MSG_EXEC,     /* u64 id, bytes fn, u64 depth, f64 priority, f64 timeout, bytes args */
  LP_MSG_CANCEL,   /* u64 id */
  LP_MSG_STOP,     /* the run is being cancelled: stop everything */
  /* worker process -> engine */
  LP_MSG_READY,   /* u64 n: the script is loaded, room for n tasks */
  LP_MSG_LOADERR, /* bytes message: the script could not be loaded */
  LP_MSG_WANT,    /* u64 n: room for n more tasks */
  LP_MSG_STARTED, /* u64 id: the task's body has begun */
  LP_MSG_RESULT,  /* u64 id, u64 state, u64 done (DONE too), bytes result, bytes failnote */
  LP_MSG_RECORD,  /* u64 id (the task sent), u64 kind, u64 task, bytes fn, f64 priority,
                     bytes data */
  LP_MSG_DONE,    /* u64 id: the task's subtree has completed */
  LP_MSG_FAILURE, /* bytes text: an unawaited failure inside the process */
  LP_MSG_COUNTER, /* u64 request, bytes name, u64 delta (two's complement), u64 add */
  LP_MSG_REPLY,   /* engine -> process: u64 request, u64 value (two's complement) */
  LP_MSG_STATS,   /* u64 subtasks made, u64 subtasks finished, u64 queued, u64 running,
                     u64 run, u64 failed, u64 retried, u64 deepest level, f64 CPU seconds,
                     u64 threads, then per thread: u64 run, f64 busy */
  LP_MSG_TRACE,   /* u64 thread, u64 kind, u64 ts, u64 end, u64 task, u64 other, u64 depth,
                     bytes fn: one trace event, times in CLOCK_MONOTONIC ns */
  /* Work sharing between processes. The engine relays what happens to an
   * exported task to the process that exported it as RESULT, RECORD and
   * DONE frames (engine -> process), laid out as above. */
  LP_MSG_HUNGRY, /* engine -> process: u64 n: hand over up to n tasks that wait */
  LP_MSG_EXPORT, /* u64 id, bytes fn, u64 depth, f64 priority, f64 timeout, u64 retries,
                    bytes args: a task for another process to run. CANCEL (u64 id) from a
                    process cancels a task it exported. */
  LP_MSG_MAX
};

/* Appending frames to a buffer. lp_wire_begin starts a frame, the put_*
 * calls add fields, lp_wire_end patches its length. All return 0 or -1
 * (out of memory). */
int lp_wire_begin(lp_buf *b, int type, size_t *mark);
int lp_wire_u64(lp_buf *b, uint64_t v);
int lp_wire_f64(lp_buf *b, double v);
int lp_wire_bytes(lp_buf *b, const void *p, size_t n);
void lp_wire_end(lp_buf *b, size_t mark);

/* A frame being read: lp_wire_frame finds the next complete frame in
 * [p, p+len); the get_* calls take its fields in order and fail (-1) when
 * the frame is shorter than the fields asked for. */
typedef struct lp_wire_msg {
  int type;
  const unsigned char *p; /* next field */
  const unsigned char *end;
} lp_wire_msg;

/* Returns the bytes the frame takes (> 0) with *m set, 0 if the buffer
 * does not yet hold a whole frame, or -1 for a frame that can never be
 * valid (bad length or unknown type). */
long lp_wire_frame(const void *p, size_t len, lp_wire_msg *m);
int lp_wire_get_u64(lp_wire_msg *m, uint64_t *v);
int lp_wire_get_f64(lp_wire_msg *m, double *v);
int lp_wire_get_bytes(lp_wire_msg *m, const char **p, size_t *n);

/* A task as EXPORT carries it (after its id), and as a broker's stream
 * keeps it (an EXPORT frame): its function, depth, priority, time limit,
 * retries and packed arguments. */
typedef struct lp_wire_task {
  const char *fn;
  size_t fnlen;
  uint64_t depth;
  double priority, timeout;
  uint64_t retries;
  const char *args;
  size_t argslen;
} lp_wire_task;

/* Appends a whole EXPORT frame (id, then the task): 0 or -1. */
int lp_wire_put_export(lp_buf *b, uint64_t id, const lp_wire_task *t);
/* Reads an EXPORT frame's fields: 0, or -1 when they are not a task (a
 * NaN priority is 0, a timeout not above 0 is none). */
int lp_wire_get_export(lp_wire_msg *m, uint64_t *id, lp_wire_task *t);

/* The INIT frame: what a worker process is started with. */
typedef struct lp_wire_init {
  uint64_t slot, threads, order, memory_limit, id_base;
  double task_timeout;
  const char *chunkname, *script, *pool;
  size_t chunkname_len, script_len, pool_len;
  uint64_t trace, retries;
} lp_wire_init;

int lp_wire_put_init(lp_buf *b, const lp_wire_init *f);
int lp_wire_get_init(lp_wire_msg *m, lp_wire_init *f);

/* Writes all of [p, p+n) to fd, retrying short writes and EINTR. 0 or -1. */
int lp_wire_write_all(int fd, const void *p, size_t n);

#endif
