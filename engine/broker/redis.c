/*
 * redis.c - one connection to the broker over hiredis 0.14 (blocking
 * calls, a timeout on each), and the messages a user needs when it cannot
 * be had or is lost: every one names the broker by its URL without the
 * password.
 *
 * hiredis writes with write(2): a write to a connection the broker closed
 * would raise SIGPIPE and end a process that did not ask for it (a host
 * program linked with libluapool, a lua5.4 that loaded the module). So each
 * call that may write runs with SIGPIPE blocked in its thread, and a
 * SIGPIPE it caused is taken back before the mask is restored: the broken
 * pipe reaches us as the I/O error it is (EPIPE), and nothing else of the
 * process changes.
 *
 * r needs no initialisation before lp_redis_open, which overwrites it; an
 * open connection must be closed (lp_redis_close) before it is opened again.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "redis.h"

/* SIGPIPE blocked in this thread around a call that may write. */
typedef struct pipe_guard {
  sigset_t pipe, old;
} pipe_guard;

static void guard_on(pipe_guard *g) {
  sigemptyset(&g->pipe);
  sigaddset(&g->pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &g->pipe, &g->old);
}

/* failed: the call failed, so it may have raised a SIGPIPE, now pending on
 * this thread; take it back unless SIGPIPE was blocked already (then a
 * pending one is the business of whoever blocked it). */
static void guard_off(pipe_guard *g, int failed) {
  if (failed && !sigismember(&g->old, SIGPIPE)) {
    sigset_t pending;
    struct timespec now = {0, 0};
    if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE))
      sigtimedwait(&g->pipe, NULL, &now);
  }
  pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

static struct timeval to_timeval(double seconds) {
  if (!(seconds > 0)) seconds = 1e6; /* no timeout asked for: a very long one */
  struct timeval tv;
  tv.tv_sec = (time_t)seconds;
  tv.tv_usec = (suseconds_t)((seconds - floor(seconds)) * 1e6);
  return tv;
}

/* Writes r->err: `before`, the broker's URL (without its password), then
 * fmt: every message names the broker the same way. */
static void say(lp_redis *r, const char *before, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(lp_redis *r, const char *before, const char *fmt, ...) {
  char url[sizeof r->err];
  lp_broker_url_show(&r->url, url, sizeof url);
  int n = snprintf(r->err, sizeof r->err, "%s %s", before, url);
  if (n < 0 || (size_t)n >= sizeof r->err) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->err + n, sizeof r->err - (size_t)n, fmt, ap);
  va_end(ap);
}

/* Why the context failed, in words: a read timeout is EAGAIN to hiredis. */
static void reason(const lp_redis *r, char *out, size_t n) {
  const redisContext *c = r->c;
  if (c->err == REDIS_ERR_IO && strcmp(c->errstr, strerror(EAGAIN)) == 0)
    snprintf(out, n, "no answer within %g s", r->timeout);
  else if (c->err == REDIS_ERR_EOF)
    snprintf(out, n, "it closed the connection");
  else
    snprintf(out, n, "%s", c->errstr[0] ? c->errstr : "an unknown error");
}

/* The connection failed: says so (prefix, then the broker, then why),
 * closes it. Returns NULL for the callers' convenience. */
static redisReply *lost(lp_redis *r, const char *prefix) {
  char why[160];
  reason(r, why, sizeof why);
  say(r, prefix, ": %s", why);
  lp_redis_close(r);
  return NULL;
}

static redisReply *not_open(lp_redis *r) {
  if (!r->err[0]) say(r, "not connected to the broker at", "%s", "");
  return NULL;
}

/* A command of the opening: its reply, or NULL with r->err set. */
static redisReply *opening(lp_redis *r, int argc, const char **argv) {
  pipe_guard g;
  guard_on(&g);
  redisReply *reply = redisCommandArgv(r->c, argc, argv, NULL);
  guard_off(&g, reply == NULL);
  if (!reply) return lost(r, "cannot talk to the broker at");
  return reply;
}

/* A refused step of the opening: the message, the reply freed, closed. */
static int refused(lp_redis *r, redisReply *reply, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refused(lp_redis *r, redisReply *reply, const char *fmt, ...) {
  char what[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  say(r, "the broker at", " %s: %.*s", what, reply && reply->str ? (int)reply->len : 0,
      reply && reply->str ? reply->str : "");
  if (reply) freeReplyObject(reply);
  lp_redis_close(r);
  return -1;
}

static int is_error(const redisReply *reply, const char *prefix) {
  return reply->type == REDIS_REPLY_ERROR && reply->str &&
         strncmp(reply->str, prefix, strlen(prefix)) == 0;
}

/* The broker's version from INFO server ("?" when it does not say). */
static void server_version(lp_redis *r, char *out, size_t n) {
  snprintf(out, n, "?");
  const char *argv[] = {"INFO", "server"};
  pipe_guard g;
  guard_on(&g);
  redisReply *info = redisCommandArgv(r->c, 2, argv, NULL);
  guard_off(&g, info == NULL);
  if (!info) return;
  const char *v = info->type == REDIS_REPLY_STRING ? strstr(info->str, "redis_version:") : NULL;
  if (v) {
    v += strlen("redis_version:");
    snprintf(out, n, "%.*s", (int)strcspn(v, "\r\n"), v);
  }
  freeReplyObject(info);
}

/* AUTH when the URL has a password, else a PING: either way a broker that
 * wants a password says so now, not at the first real command. */
static int authenticate(lp_redis *r) {
  const lp_broker_url *u = &r->url;
  if (!u->password[0]) {
    const char *ping[] = {"PING"};
    redisReply *reply = opening(r, 1, ping);
    if (!reply) return -1;
    if (is_error(reply, "NOAUTH")) {
      freeReplyObject(reply);
      say(r, "the broker at", "%s",
          " wants a password (NOAUTH): give it in the URL, redis://[user:password@]HOST:PORT[/DB]");
      lp_redis_close(r);
      return -1;
    }
    if (reply->type == REDIS_REPLY_ERROR) return refused(r, reply, "refused PING");
    freeReplyObject(reply);
    return 0;
  }
  const char *auth[3] = {"AUTH"};
  int argc = 1;
  if (u->user[0]) auth[argc++] = u->user; /* an ACL user; else the default user */
  auth[argc++] = u->password;
  redisReply *reply = opening(r, argc, auth);
  if (!reply) return -1;
  if (reply->type == REDIS_REPLY_ERROR) return refused(r, reply, "refused AUTH");
  freeReplyObject(reply);
  return 0;
}

static int select_db(lp_redis *r) {
  char db[16];
  snprintf(db, sizeof db, "%d", r->url.db);
  const char *argv[] = {"SELECT", db};
  redisReply *reply = opening(r, 2, argv);
  if (!reply) return -1;
  if (reply->type == REDIS_REPLY_ERROR) return refused(r, reply, "refused SELECT %s", db);
  freeReplyObject(reply);
  return 0;
}

static int load_functions(lp_redis *r) {
  const char *argv[] = {"FUNCTION", "LOAD", "REPLACE", lp_broker_functions};
  redisReply *reply = opening(r, 4, argv);
  if (!reply) return -1;
  if (is_error(reply, "ERR unknown command")) {
    char version[64];
    server_version(r, version, sizeof version);
    freeReplyObject(reply);
    say(r, "the broker at", " is Redis %s; luapool needs Redis 7.0 or later (functions)", version);
    lp_redis_close(r);
    return -1;
  }
  if (reply->type == REDIS_REPLY_ERROR)
    return refused(r, reply, "refused luapool's function library (FUNCTION LOAD)");
  freeReplyObject(reply);
  return 0;
}

int lp_redis_open(lp_redis *r, const lp_broker_url *url, double timeout, int functions) {
  lp_broker_url u = *url; /* url may be &r->url: a reconnect */
  memset(r, 0, sizeof *r);
  r->url = u;
  r->timeout = timeout;
  struct timeval tv = to_timeval(timeout);
  r->c = redisConnectWithTimeout(u.host, u.port, tv);
  if (!r->c) {
    say(r, "cannot reach the broker at", ": out of memory");
    return -1;
  }
  if (r->c->err) {
    lost(r, "cannot reach the broker at");
    return -1;
  }
  if (redisSetTimeout(r->c, tv) != REDIS_OK) {
    lost(r, "cannot reach the broker at");
    return -1;
  }
  /* A broker that vanished without a FIN (a machine gone, a cable cut) is
   * found by TCP keepalive while a connection waits idle. */
  redisEnableKeepAlive(r->c);
  if (authenticate(r) != 0) return -1;
  if (u.db != 0 && select_db(r) != 0) return -1;
  if (functions && load_functions(r) != 0) return -1;
  return 0;
}

void lp_redis_close(lp_redis *r) {
  if (!r || !r->c) return;
  redisFree(r->c);
  r->c = NULL;
}

redisReply *lp_redis_cmd(lp_redis *r, int argc, const char **argv, const size_t *lens) {
  if (!r->c) return not_open(r);
  pipe_guard g;
  guard_on(&g);
  redisReply *reply = redisCommandArgv(r->c, argc, argv, lens);
  guard_off(&g, reply == NULL);
  if (!reply) return lost(r, "lost the broker at");
  return reply;
}

redisReply *lp_redis_cmdf(lp_redis *r, const char *fmt, ...) {
  if (!r->c) return not_open(r);
  va_list ap;
  va_start(ap, fmt);
  pipe_guard g;
  guard_on(&g);
  redisReply *reply = redisvCommand(r->c, fmt, ap);
  guard_off(&g, reply == NULL);
  va_end(ap);
  if (!reply) return lost(r, "lost the broker at");
  return reply;
}

int lp_redis_append(lp_redis *r, int argc, const char **argv, const size_t *lens) {
  if (!r->c) {
    not_open(r);
    return -1;
  }
  /* Only fills the output buffer: nothing is written until a reply is
   * asked for. */
  if (redisAppendCommandArgv(r->c, argc, argv, lens) != REDIS_OK) {
    lost(r, "lost the broker at");
    return -1;
  }
  return 0;
}

int lp_redis_append_raw(lp_redis *r, const char *cmd, size_t len) {
  if (!r->c) {
    not_open(r);
    return -1;
  }
  if (redisAppendFormattedCommand(r->c, cmd, len) != REDIS_OK) {
    lost(r, "lost the broker at");
    return -1;
  }
  return 0;
}

redisReply *lp_redis_reply(lp_redis *r) {
  if (!r->c) return not_open(r);
  /* A reply already read needs no write: the guard only when queued
   * commands are still to be sent. */
  int writes = r->c->obuf && sdslen(r->c->obuf) > 0;
  pipe_guard g;
  if (writes) guard_on(&g);
  void *reply = NULL;
  int rc = redisGetReply(r->c, &reply);
  if (writes) guard_off(&g, rc != REDIS_OK);
  if (rc != REDIS_OK || !reply) return lost(r, "lost the broker at");
  return reply;
}
