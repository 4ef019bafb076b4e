/*
 * test_api.c - the public C API: a whole run through callbacks, and misuse
 * (NULL handles, calls in the wrong order, unknown names, bad scripts).
 */
#include <stdio.h>
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
    "function slow() luapool.sleep(5) end\n";

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

int main(void) {
  test_run(2);
  test_run(0);
  test_misuse();
  return check_report("test_api");
}
