/*
 * redis.h - one connection to the broker (hiredis), with the messages a
 * user needs when it cannot be had: the address refused, AUTH refused, a
 * Redis too old for functions, the broker gone mid-run.
 *
 * A connection is used by one thread at a time. Commands are argv-style
 * (binary-safe); pipelining is lp_redis_append + lp_redis_reply.
 */
#ifndef LP_BROKER_REDIS_H
#define LP_BROKER_REDIS_H

#include <stddef.h>

#include "url.h"

struct redisReply;

typedef struct lp_redis {
  struct redisContext *c;
  lp_broker_url url;
  double timeout; /* seconds for connect and for each reply */
  char err[512];  /* the last error, for the user */
} lp_redis;

/* Connects, sends AUTH when the URL has a password, SELECT when it has a
 * db, and loads the luapool function library (FUNCTION LOAD REPLACE of
 * lp_broker_functions) when `functions` is set. 0, or -1 with r->err set:
 *   "cannot reach the broker at redis://host:port: Connection refused"
 *   "the broker at redis://user@host:port refused AUTH: WRONGPASS ..."
 *   "the broker at ... is Redis 6.2; luapool needs Redis 7.0 or later (functions)" */
int lp_redis_open(lp_redis *r, const lp_broker_url *url, double timeout, int functions);
/* Closes the connection if open; lp_redis_open may be called again (a
 * reconnect). */
void lp_redis_close(lp_redis *r);

/* Runs one command: its reply (freeReplyObject it), or NULL with r->err
 * set when the connection failed (then the connection is closed: reopen).
 * A reply of type REDIS_REPLY_ERROR is returned as a reply, not NULL. */
struct redisReply *lp_redis_cmd(lp_redis *r, int argc, const char **argv, const size_t *lens);
/* Printf-style, for commands without binary arguments. */
struct redisReply *lp_redis_cmdf(lp_redis *r, const char *fmt, ...);

/* Pipelining: queue commands, then take their replies in order. append
 * returns 0 or -1 (out of memory); reply returns as lp_redis_cmd does. */
int lp_redis_append(lp_redis *r, int argc, const char **argv, const size_t *lens);
struct redisReply *lp_redis_reply(lp_redis *r);
/* Queues a command already in the protocol's bytes (redisFormatCommandArgv):
 * 0 or -1. */
int lp_redis_append_raw(lp_redis *r, const char *cmd, size_t len);

/* The Lua source of the function library (functions.lua, compiled in). */
extern const char lp_broker_functions[];

#endif
