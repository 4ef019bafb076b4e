/*
 * test_api.c - the public C API: a whole run through callbacks, futures and
 * arguments built from C, and misuse (NULL handles, calls in the wrong
 * order, unknown names, bad scripts, double close, use after close).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "check.h"
#include "luapool.h"

typedef struct seen {
  int records;
  int failures;
  long sum;
  char last[64];
} seen;

static void on_record(void *ud, const luapool_record *rec) {
  seen *s = ud;
  s->records++;
  snprintf(s->last, sizeof s->last, "%.*s", (int)rec->text_len, rec->text);
  long v = 0;
  sscanf(rec->text, "%ld", &v);
  s->sum += v;
}

static void on_failure(void *ud, const char *msg) {
  (void)msg;
  ((seen *)ud)->failures++;
}

static int l_twice(lua_State *L) {
  lua_pushinteger(L, 2 * luaL_checkinteger(L, 1));
  return 1;
}

static int open_host(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, l_twice);
  lua_setfield(L, -2, "twice");
  return 1;
}

static const char script[] =
    "local luapool = require 'luapool'\n"
    "local host = require 'host'\n"
    "function leaf(i) luapool.emit(host.twice(i)) end\n"
    "function boom() error('boom') end\n"
    "function main(n) for i = 1, tonumber(n) do luapool.spawn(leaf, i) end end\n"
    "function slow() luapool.sleep(5) end\n"
    "function echo(...) return ... end\n"
    "function sum(t) local s = 0 for _, v in ipairs(t) do s = s + v end return s end\n"
    "function kinds(...) local r = {} for i = 1, select('#', ...) do\n"
    "  local v = select(i, ...) r[i] = math.type(v) or type(v) end\n"
    "  return table.concat(r, ' ') end\n"
    "function depth(t) local d = 0 while t do d = d + 1 t = t.down end return d end\n"
    "function selfref() local t = {} t.me = t return t, leaf end\n"
    "function fanout(n) for i = 1, n or 0 do luapool.spawn(leaf, i) end return n end\n"
    "function spin(s) local t = os.clock() + s while os.clock() < t do end return s end\n"
    "function whereami() local me = luapool.self() return me.pool, me.priority end\n"
    "function flaky(name, n) if luapool.counter(name):add() <= n then error('flaky') end\n"
    "  return 'ok' end\n";

static luapool *open_with(seen *s, int workers) {
  luapool_config cfg;
  luapool_config_init(&cfg);
  cfg.workers = workers;
  cfg.on_record = on_record;
  cfg.on_failure = on_failure;
  cfg.ud = s;
  luapool *lp = NULL;
  CHECK_EQ(luapool_open(&cfg, &lp), 0);
  return lp;
}

static void test_run(int workers) {
  seen s = {0};
  luapool *lp = open_with(&s, workers);
  CHECK_EQ(luapool_register_module(lp, "host", open_host), 0);
  CHECK_EQ(luapool_load_string(lp, script, strlen(script), "=test"), 0);
  CHECK(luapool_has_function(lp, "leaf"));
  CHECK(!luapool_has_function(lp, "nope"));
  const char *args[] = {"100"};
  CHECK_EQ(luapool_submit(lp, "main", 1, args), 0);
  CHECK_EQ(luapool_wait(lp, -1), 0);
  CHECK_EQ(s.records, 100);
  CHECK_EQ(s.sum, 2 * 5050);
  CHECK_STR(s.last, "200"); /* tree order: the last spawn's record comes last */
  CHECK_EQ(luapool_submit(lp, "boom", 0, NULL), 0);
  CHECK_EQ(luapool_wait(lp, -1), LUAPOOL_ETASKFAIL);
  CHECK_EQ(s.failures, 1);
  luapool_stats st;
  luapool_get_stats(lp, &st);
  CHECK(st.tasks_run >= 102);
  CHECK_EQ(st.records, 100);
  luapool_close(lp);
}

static void test_misuse(void) {
  luapool *lp = (luapool *)1;
  CHECK_EQ(luapool_open(NULL, &lp), LUAPOOL_EINVAL);
  CHECK(lp == NULL);
  luapool_config cfg;
  luapool_config_init(&cfg);
  cfg.workers = -1;
  CHECK_EQ(luapool_open(&cfg, &lp), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_load_file(NULL, "x.lua"), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_submit(NULL, "main", 0, NULL), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_wait(NULL, 0), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_register_module(NULL, "m", open_host), LUAPOOL_EINVAL);
  luapool_close(NULL); /* accepted */
  luapool_cancel(NULL);
  CHECK_STR(luapool_strerror(LUAPOOL_ENOTASK), "no such task function");
  CHECK_STR(luapool_strerror(12345), "unknown error");

  seen s = {0};
  lp = open_with(&s, 2);
  CHECK_EQ(luapool_submit(lp, "main", 0, NULL), LUAPOOL_ESTATE); /* no script yet */
  CHECK_EQ(luapool_wait(lp, 0), LUAPOOL_ESTATE);
  const char bad[] = "function main( end";
  CHECK_EQ(luapool_load_string(lp, bad, strlen(bad), "@bad.lua"), LUAPOOL_ESCRIPT);
  CHECK(strstr(luapool_errmsg(lp), "bad.lua:1:") != NULL);
  luapool_close(lp);

  lp = open_with(&s, 2);
  CHECK_EQ(luapool_load_file(lp, "/nonexistent/x.lua"), LUAPOOL_ESCRIPT);
  CHECK(strstr(luapool_errmsg(lp), "cannot open") != NULL);
  luapool_close(lp);

  lp = open_with(&s, 1);
  CHECK_EQ(luapool_register_module(lp, "host", open_host), 0);
  CHECK_EQ(luapool_load_string(lp, script, strlen(script), "=test"), 0);
  CHECK_EQ(luapool_load_string(lp, script, strlen(script), "=test"), LUAPOOL_ESTATE);
  CHECK_EQ(luapool_register_module(lp, "late", open_host), LUAPOOL_ESTATE);
  CHECK_EQ(luapool_submit(lp, "nope", 0, NULL), LUAPOOL_ENOTASK);
  CHECK_EQ(luapool_submit(lp, "slow", 0, NULL), 0);
  CHECK_EQ(luapool_wait(lp, 0.05), LUAPOOL_ETIMEDOUT);
  luapool_close(lp); /* cancels the sleeping task and joins everything */
}

/* A future's text, as a C string for CHECK_STR. */
static const char *text_of(luapool_future *f) {
  size_t len = 0;
  const char *t = luapool_future_text(f, &len);
  if (t && strlen(t) != len) return "(length mismatch)";
  return t;
}

static void test_values(int workers) {
  seen s = {0};
  luapool *lp = open_with(&s, workers);
  CHECK_EQ(luapool_register_module(lp, "host", open_host), 0);
  CHECK_EQ(luapool_load_string(lp, script, strlen(script), "=test"), 0);
  luapool_values *v = luapool_values_new();
  CHECK(v != NULL);

  /* Scalars keep their types: integers stay integers, floats floats. */
  CHECK_EQ(luapool_values_integer(v, 42), 0);
  CHECK_EQ(luapool_values_number(v, 2.5), 0);
  CHECK_EQ(luapool_values_number(v, 3.0), 0);
  CHECK_EQ(luapool_values_boolean(v, 1), 0);
  CHECK_EQ(luapool_values_string(v, "word"), 0);
  CHECK_EQ(luapool_values_lstring(v, "a\0b", 3), 0);
  CHECK_EQ(luapool_values_nil(v), 0);
  CHECK_EQ(luapool_values_table(v, 0, 0), 0);
  CHECK_EQ(luapool_values_count(v), 8);
  luapool_future *f = NULL;
  CHECK_EQ(luapool_submit_values(lp, "kinds", v, &f), 0);
  CHECK_EQ(luapool_future_wait(f, -1), 0);
  CHECK(luapool_future_done(f));
  CHECK_STR(text_of(f), "integer float float boolean string string nil table");
  luapool_future_free(f);

  /* The same values come back from echo: packed bytes and text. */
  CHECK_EQ(luapool_submit_values(lp, "echo", v, &f), 0);
  CHECK_EQ(luapool_future_wait(f, -1), 0);
  const char *packed = NULL;
  size_t len = 0;
  CHECK_EQ(luapool_future_result(f, &packed, &len), 8);
  CHECK(packed != NULL && len > 8);
  size_t tlen = 0;
  const char *t = luapool_future_text(f, &tlen);
  CHECK(t != NULL);
  CHECK_EQ(tlen, strlen("42\t2.5\t3.0\ttrue\tword\ta") + 2 + strlen("\tnil\t{}") - 0);
  CHECK(t && memcmp(t, "42\t2.5\t3.0\ttrue\tword\ta\0b\tnil\t", 29) == 0);
  /* And read back from C, value by value. */
  luapool_cursor c;
  luapool_value val;
  CHECK_EQ(luapool_cursor_init(&c, packed, len), 8);
  CHECK_EQ(luapool_cursor_next(&c, &val), 0);
  CHECK(val.type == LUAPOOL_TINTEGER && val.integer == 42);
  CHECK_EQ(luapool_cursor_next(&c, &val), 0);
  CHECK(val.type == LUAPOOL_TNUMBER && val.number == 2.5);
  CHECK_EQ(luapool_cursor_next(&c, &val), 0);
  CHECK(val.type == LUAPOOL_TNUMBER && val.number == 3.0);
  CHECK_EQ(luapool_cursor_next(&c, &val), 0);
  CHECK(val.type == LUAPOOL_TBOOLEAN && val.boolean == 1);
  CHECK_EQ(luapool_cursor_next(&c, &val), 0);
  CHECK(val.type == LUAPOOL_TSTRING && val.len == 4 && memcmp(val.string, "word", 4) == 0);
  CHECK_EQ(luapool_cursor_next(&c, &val), 0);
  CHECK(val.type == LUAPOOL_TSTRING && val.len == 3 && memcmp(val.string, "a\0b", 3) == 0);
  CHECK_EQ(luapool_cursor_next(&c, &val), 0);
  CHECK_EQ(val.type, LUAPOOL_TNIL);
  CHECK_EQ(luapool_cursor_next(&c, &val), 0);
  CHECK(val.type == LUAPOOL_TTABLE && val.narr == 0 && val.nhash == 0 && val.ref == 0);
  CHECK_EQ(luapool_cursor_next(&c, &val), LUAPOOL_EINVAL);              /* the end */
  CHECK_EQ(luapool_cursor_init(&c, "\x01\x02\x00", 3), LUAPOOL_EINVAL); /* one value short */
  CHECK_EQ(luapool_cursor_init(&c, "\x09\x00", 2), LUAPOOL_EINVAL);     /* not version 1 */
  CHECK_EQ(luapool_cursor_init(NULL, packed, len), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_cursor_next(NULL, &val), LUAPOOL_EINVAL);
  luapool_future_free(f);

  /* A table that holds itself, and a task function, come back as such. */
  CHECK_EQ(luapool_submit_values(lp, "selfref", NULL, &f), 0);
  CHECK_EQ(luapool_future_wait(f, -1), 0);
  CHECK_EQ(luapool_future_result(f, &packed, &len), 2);
  CHECK_EQ(luapool_cursor_init(&c, packed, len), 2);
  CHECK_EQ(luapool_cursor_next(&c, &val), 0);
  CHECK(val.type == LUAPOOL_TTABLE && val.narr == 0 && val.nhash == 1 && val.ref == 0);
  CHECK_EQ(luapool_cursor_next(&c, &val), 0);
  CHECK(val.type == LUAPOOL_TSTRING && val.len == 2 && memcmp(val.string, "me", 2) == 0);
  CHECK_EQ(luapool_cursor_next(&c, &val), 0);
  CHECK(val.type == LUAPOOL_TREF && val.ref == 0);
  CHECK_EQ(luapool_cursor_next(&c, &val), 0);
  CHECK(val.type == LUAPOOL_TFUNCTION && val.len == 4 && memcmp(val.string, "leaf", 4) == 0);
  CHECK_EQ(luapool_cursor_next(&c, &val), LUAPOOL_EINVAL);
  luapool_future_free(f);

  /* Integers at the edges keep every bit. */
  luapool_values_reset(v);
  CHECK_EQ(luapool_values_integer(v, INT64_MIN), 0);
  CHECK_EQ(luapool_values_integer(v, -1), 0);
  CHECK_EQ(luapool_values_integer(v, INT64_MAX), 0);
  CHECK_EQ(luapool_values_number(v, -0.5), 0);
  CHECK_EQ(luapool_submit_values(lp, "echo", v, &f), 0);
  CHECK_EQ(luapool_future_wait(f, -1), 0);
  CHECK_EQ(luapool_future_result(f, &packed, &len), 4);
  CHECK_EQ(luapool_cursor_init(&c, packed, len), 4);
  int64_t want[] = {INT64_MIN, -1, INT64_MAX};
  for (int i = 0; i < 3; i++) {
    CHECK_EQ(luapool_cursor_next(&c, &val), 0);
    CHECK(val.type == LUAPOOL_TINTEGER && val.integer == want[i]);
  }
  CHECK_EQ(luapool_cursor_next(&c, &val), 0);
  CHECK(val.type == LUAPOOL_TNUMBER && val.number == -0.5);
  luapool_future_free(f);

  /* Nested tables: {10, 20, 30} and {name = "n", list = {1, 2}}. */
  luapool_values_reset(v);
  CHECK_EQ(luapool_values_count(v), 0);
  CHECK_EQ(luapool_values_table(v, 3, 0), 0);
  CHECK_EQ(luapool_values_integer(v, 10), 0);
  CHECK_EQ(luapool_values_integer(v, 20), 0);
  CHECK_EQ(luapool_values_integer(v, 30), 0);
  CHECK_EQ(luapool_values_count(v), 1);
  CHECK_EQ(luapool_submit_values(lp, "sum", v, &f), 0);
  CHECK_EQ(luapool_future_wait(f, -1), 0);
  CHECK_STR(text_of(f), "60");
  luapool_future_free(f);
  luapool_values_reset(v);
  CHECK_EQ(luapool_values_table(v, 0, 2), 0);
  CHECK_EQ(luapool_values_string(v, "name"), 0);
  CHECK_EQ(luapool_values_string(v, "n"), 0);
  CHECK_EQ(luapool_values_string(v, "list"), 0);
  CHECK_EQ(luapool_values_table(v, 2, 0), 0);
  CHECK_EQ(luapool_values_integer(v, 1), 0);
  CHECK_EQ(luapool_values_integer(v, 2), 0);
  CHECK_EQ(luapool_values_count(v), 1);
  CHECK_EQ(luapool_submit_values(lp, "echo", v, &f), 0);
  CHECK_EQ(luapool_future_wait(f, -1), 0);
  CHECK_STR(text_of(f), "{\"list\":[1,2],\"name\":\"n\"}");
  luapool_future_free(f);

  /* Nesting as deep as the codec allows (a chain of .down tables). */
  luapool_values_reset(v);
  for (int i = 0; i < 150; i++) {
    CHECK_EQ(luapool_values_table(v, 0, 1), 0);
    CHECK_EQ(luapool_values_string(v, "down"), 0);
  }
  CHECK_EQ(luapool_values_boolean(v, 0), 0);
  CHECK_EQ(luapool_submit_values(lp, "depth", v, &f), 0);
  CHECK_EQ(luapool_future_wait(f, -1), 0);
  CHECK_STR(text_of(f), "150");
  luapool_future_free(f);

  /* No arguments, no future: as luapool_submit. */
  CHECK_EQ(luapool_submit_values(lp, "fanout", NULL, NULL), 0);
  CHECK_EQ(luapool_wait(lp, -1), 0);

  /* Refused builders and submits run nothing and make no future. */
  luapool_values_reset(v);
  CHECK_EQ(luapool_values_table(v, 1, 1), 0);
  CHECK_EQ(luapool_values_integer(v, 1), 0);
  CHECK_EQ(luapool_values_nil(v), LUAPOOL_EINVAL); /* a nil key */
  CHECK_EQ(luapool_values_number(v, NAN), LUAPOOL_EINVAL);
  f = (luapool_future *)1;
  CHECK_EQ(luapool_submit_values(lp, "echo", v, &f), LUAPOOL_EINVAL); /* incomplete */
  CHECK(f == NULL);
  CHECK(strstr(luapool_errmsg(lp), "incomplete") != NULL);
  CHECK_EQ(luapool_values_string(v, "k"), 0);
  CHECK_EQ(luapool_values_number(v, NAN), 0); /* NaN as a value is fine */
  f = (luapool_future *)1;
  CHECK_EQ(luapool_submit_values(lp, "nope", v, &f), LUAPOOL_ENOTASK);
  CHECK(f == NULL);
  CHECK(strstr(luapool_errmsg(lp), "nope") != NULL);
  CHECK_EQ(luapool_submit_values(lp, NULL, v, &f), LUAPOOL_EINVAL);
  luapool_values_reset(v);
  int rc = 0, n = 0;
  while ((rc = luapool_values_table(v, 1, 0)) == 0) n++;
  CHECK_EQ(rc, LUAPOOL_EINVAL); /* nested deeper than the codec allows */
  CHECK(n >= 150 && n < 200);
  luapool_values_free(v);
  CHECK_EQ(luapool_values_integer(NULL, 1), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_values_string(NULL, "x"), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_values_table(NULL, 0, 0), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_values_count(NULL), 0);
  luapool_values_reset(NULL);
  luapool_values_free(NULL);
  CHECK_EQ(s.failures, 0);
  CHECK_EQ(luapool_close(lp), 0);
}

static void test_futures(int workers) {
  seen s = {0};
  luapool *lp = open_with(&s, workers);
  CHECK_EQ(luapool_register_module(lp, "host", open_host), 0);
  CHECK_EQ(luapool_load_string(lp, script, strlen(script), "=test"), 0);

  /* Records stream while the host waits on a future; the future is done
   * when the body returns, and luapool_wait sees the rest of the tree. */
  luapool_values *v = luapool_values_new();
  CHECK_EQ(luapool_values_integer(v, 50), 0);
  luapool_future *f = NULL;
  CHECK_EQ(luapool_submit_values(lp, "fanout", v, &f), 0);
  CHECK(luapool_future_id(f) > 0);
  CHECK_EQ(luapool_future_wait(f, -1), 0);
  CHECK_STR(text_of(f), "50");
  CHECK_EQ(luapool_wait(lp, -1), 0);
  CHECK_EQ(s.records, 50);
  CHECK_EQ(s.sum, 2 * (50 * 51 / 2));
  CHECK_EQ(luapool_future_wait(f, 0), 0); /* again: the same outcome */
  luapool_future_free(f);

  /* A failed task: waiting on it handles the failure. */
  CHECK_EQ(luapool_submit_values(lp, "boom", NULL, &f), 0);
  CHECK_EQ(luapool_future_wait(f, -1), LUAPOOL_ETASKFAIL);
  CHECK(strstr(text_of(f), "task 'boom'") != NULL);
  CHECK(strstr(text_of(f), "boom") != NULL);
  const char *packed;
  size_t len;
  CHECK_EQ(luapool_future_result(f, &packed, &len), LUAPOOL_ESTATE);
  luapool_future_free(f);
  CHECK_EQ(luapool_wait(lp, -1), 0);
  CHECK_EQ(s.failures, 0);

  /* A failed task whose future is freed unawaited is reported. */
  CHECK_EQ(luapool_submit_values(lp, "boom", NULL, &f), 0);
  CHECK_EQ(luapool_wait(lp, -1), 0); /* the future still could be awaited */
  CHECK(luapool_future_done(f));
  luapool_future_free(f);
  CHECK_EQ(luapool_wait(lp, -1), LUAPOOL_ETASKFAIL);
  CHECK_EQ(s.failures, 1);

  if (workers > 0) {
    /* A timed-out wait leaves the task running; cancel stops it. */
    CHECK_EQ(luapool_submit_values(lp, "slow", NULL, &f), 0);
    CHECK_EQ(luapool_future_wait(f, 0.01), LUAPOOL_ETIMEDOUT);
    CHECK(luapool_future_text(f, NULL) == NULL);
    CHECK_EQ(luapool_future_result(f, &packed, &len), LUAPOOL_ESTATE);
    CHECK_EQ(luapool_future_cancel(f), 1);
    CHECK_EQ(luapool_future_wait(f, -1), LUAPOOL_ECANCELLED);
    CHECK(strstr(text_of(f), "cancelled") != NULL);
    CHECK_EQ(luapool_future_cancel(f), 0); /* finished already */
    luapool_future_free(f);
  }

  /* Futures outlive the engine: a finished one keeps its outcome, one still
   * running at close is cancelled by it. */
  luapool_future *done = NULL, *running = NULL;
  luapool_values_reset(v);
  CHECK_EQ(luapool_values_table(v, 0, 1), 0);
  CHECK_EQ(luapool_values_string(v, "k"), 0);
  CHECK_EQ(luapool_values_string(v, "v"), 0);
  CHECK_EQ(luapool_submit_values(lp, "echo", v, &done), 0);
  CHECK_EQ(luapool_future_wait(done, -1), 0);
  if (workers > 0) CHECK_EQ(luapool_submit_values(lp, "slow", NULL, &running), 0);
  CHECK_EQ(luapool_close(lp), 0);
  CHECK_EQ(luapool_future_wait(done, 0), 0);
  CHECK_STR(text_of(done), "{\"k\":\"v\"}");
  CHECK_EQ(luapool_future_result(done, &packed, &len), 1);
  CHECK_EQ(luapool_future_cancel(done), 0);
  luapool_future_free(done);
  if (running) {
    CHECK(luapool_future_done(running));
    CHECK_EQ(luapool_future_wait(running, -1), LUAPOOL_ECANCELLED);
    CHECK(text_of(running) != NULL);
    luapool_future_free(running);
  }
  luapool_values_free(v);

  CHECK_EQ(luapool_future_wait(NULL, 0), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_future_done(NULL), 0);
  CHECK_EQ(luapool_future_cancel(NULL), 0);
  CHECK_EQ(luapool_future_id(NULL), 0);
  CHECK(luapool_future_text(NULL, NULL) == NULL);
  CHECK_EQ(luapool_future_result(NULL, &packed, &len), LUAPOOL_EINVAL);
  luapool_future_free(NULL);
}

/* luapool_submit_opts: a root's pool, priority, time limit and retries, as
 * a task's spawn options; a cancelled future is done at once. */
static void test_task_opts(int workers) {
  seen s = {0};
  luapool *lp = open_with(&s, workers);
  CHECK_EQ(luapool_register_module(lp, "host", open_host), 0);
  CHECK_EQ(luapool_add_pool(lp, "io", "threads:1"), 0);
  CHECK_EQ(luapool_load_string(lp, script, strlen(script), "=test"), 0);
  luapool_task_opts o;
  luapool_task_opts_init(&o);
  CHECK(o.priority == 0 && o.timeout < 0 && o.retries < 0 && o.pool == NULL);
  luapool_future *f = NULL;
  o.pool = workers > 0 ? "io" : NULL; /* inline: every task runs on the host */
  o.priority = 3;
  CHECK_EQ(luapool_submit_opts(lp, "whereami", NULL, &o, &f), 0);
  CHECK_EQ(luapool_future_wait(f, -1), 0);
  CHECK_STR(text_of(f), workers > 0 ? "io\t3" : "main\t3");
  luapool_future_free(f);
  luapool_task_opts_init(&o);
  o.pool = "nowhere";
  CHECK_EQ(luapool_submit_opts(lp, "whereami", NULL, &o, &f), LUAPOOL_EINVAL);
  CHECK(f == NULL);
  CHECK(strstr(luapool_errmsg(lp), "no pool named 'nowhere' (pools: main, io)") != NULL);
  luapool_task_opts_init(&o);
  o.priority = NAN;
  CHECK_EQ(luapool_submit_opts(lp, "whereami", NULL, &o, NULL), LUAPOOL_EINVAL);

  /* Retries: flaky fails twice, then returns. */
  luapool_values *v = luapool_values_new();
  CHECK_EQ(luapool_values_string(v, "a"), 0);
  CHECK_EQ(luapool_values_integer(v, 2), 0);
  luapool_task_opts_init(&o);
  o.retries = 2;
  CHECK_EQ(luapool_submit_opts(lp, "flaky", v, &o, &f), 0);
  CHECK_EQ(luapool_future_wait(f, -1), 0);
  CHECK_STR(text_of(f), "ok");
  luapool_future_free(f);
  luapool_values_reset(v);
  CHECK_EQ(luapool_values_string(v, "b"), 0);
  CHECK_EQ(luapool_values_integer(v, 2), 0);
  o.retries = 1;
  CHECK_EQ(luapool_submit_opts(lp, "flaky", v, &o, &f), 0);
  CHECK_EQ(luapool_future_wait(f, -1), LUAPOOL_ETASKFAIL);
  luapool_future_free(f);

  if (workers > 0) {
    /* A time limit: the task is stopped long before its 5 s. */
    luapool_task_opts_init(&o);
    o.timeout = 0.2;
    CHECK_EQ(luapool_submit_opts(lp, "slow", NULL, &o, &f), 0);
    CHECK_EQ(luapool_future_wait(f, 30), LUAPOOL_ETASKFAIL);
    CHECK(strstr(text_of(f), "timed out") != NULL);
    luapool_future_free(f);

    /* One worker busy spinning; a queued task cancelled is done at once. */
    luapool_values_reset(v);
    CHECK_EQ(luapool_values_number(v, 0.3), 0);
    luapool_future *busy = NULL, *queued = NULL;
    luapool_task_opts_init(&o);
    o.pool = "io";
    CHECK_EQ(luapool_submit_opts(lp, "spin", v, &o, &busy), 0);
    CHECK_EQ(luapool_submit_opts(lp, "echo", NULL, &o, &queued), 0);
    CHECK_EQ(luapool_future_cancel(queued), 1);
    CHECK(luapool_future_done(queued));
    CHECK(!luapool_future_done(busy));
    CHECK_EQ(luapool_future_wait(queued, 0), LUAPOOL_ECANCELLED);
    CHECK(strstr(text_of(queued), "task 'echo'") != NULL);
    CHECK(strstr(text_of(queued), "was cancelled") != NULL);
    CHECK_EQ(luapool_future_cancel(queued), 0); /* once */
    CHECK_EQ(luapool_future_wait(busy, -1), 0);
    luapool_future_free(busy);
    CHECK_EQ(luapool_wait(lp, -1), 0);
    CHECK_EQ(luapool_future_wait(queued, 0), LUAPOOL_ECANCELLED);
    luapool_future_free(queued);
  }
  luapool_values_free(v);
  CHECK_EQ(luapool_wait(lp, -1), 0);
  CHECK_EQ(s.failures, 0);
  luapool_close(lp);
}

/* Every call on a closed handle is refused without touching it. */
static void test_closed(void) {
  seen s = {0};
  luapool *lp = open_with(&s, 2);
  CHECK_EQ(luapool_load_string(lp, script, strlen(script), "=test"), LUAPOOL_ESCRIPT); /* no host */
  CHECK_EQ(luapool_close(lp), 0);
  CHECK_EQ(luapool_close(lp), LUAPOOL_EINVAL); /* a second close is harmless */
  const char *args[] = {"1"};
  CHECK_EQ(luapool_submit(lp, "main", 1, args), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_submit_values(lp, "main", NULL, NULL), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_wait(lp, 0), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_load_file(lp, "x.lua"), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_register_module(lp, "m", open_host), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_add_pool(lp, "io", "threads:2"), LUAPOOL_EINVAL);
  CHECK(!luapool_has_function(lp, "main"));
  const char *const *names;
  CHECK_EQ(luapool_functions(lp, &names), LUAPOOL_EINVAL);
  CHECK_STR(luapool_errmsg(lp), "not an open luapool handle");
  luapool_cancel(lp);
  luapool_stats st;
  st.tasks_run = 99;
  luapool_get_stats(lp, &st);
  CHECK_EQ(st.tasks_run, 0);
  luapool_get_stats(NULL, NULL);

  /* Handles are told apart: closing one leaves another working. */
  luapool *a = open_with(&s, 1), *b = open_with(&s, 1);
  CHECK_EQ(luapool_register_module(b, "host", open_host), 0);
  CHECK_EQ(luapool_load_string(b, script, strlen(script), "=test"), 0);
  CHECK_EQ(luapool_close(a), 0);
  CHECK_EQ(luapool_close(a), LUAPOOL_EINVAL);
  CHECK_EQ(luapool_submit(b, "main", 1, args), 0);
  CHECK_EQ(luapool_wait(b, -1), 0);
  CHECK_EQ(luapool_close(b), 0);
  CHECK_EQ(luapool_close(NULL), 0);
}

int main(void) {
  test_run(2);
  test_run(0);
  test_misuse();
  test_values(2);
  test_values(0);
  test_futures(2);
  test_futures(0);
  test_task_opts(2);
  test_task_opts(0);
  test_closed();
  return check_report("test_api");
}
