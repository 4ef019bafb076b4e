/*
 * host.c - a C program that embeds luapool: it gives tasks one function of
 * its own (`require "host"`, `host.weight(word)`), submits work and prints
 * the records, in tree order, as they arrive; then it submits one more task
 * with a table of arguments built in C and prints its result.
 *
 *   host tasks.lua word...
 */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "luapool.h"

/* The host's own function, called from tasks on worker threads: it must be
 * thread-safe, as this one is (it touches nothing shared). */
static int l_weight(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_Integer w = 0;
  for (size_t i = 0; i < len; i++) w += (unsigned char)s[i];
  lua_pushinteger(L, w);
  return 1;
}

static int open_host(lua_State *L) {
  static const luaL_Reg funcs[] = {{"weight", l_weight}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  return 1;
}

static void print_record(void *ud, const luapool_record *rec) {
  (void)ud;
  printf("%.*s\n", (int)rec->text_len, rec->text);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s tasks.lua [word...]\n", argv[0]);
    return 2;
  }
  luapool_config cfg;
  luapool_config_init(&cfg);
  cfg.workers = 2;
  cfg.on_record = print_record;
  luapool *lp;
  int rc = luapool_open(&cfg, &lp);
  if (rc == 0) rc = luapool_register_module(lp, "host", open_host);
  if (rc == 0) rc = luapool_load_file(lp, argv[1]);
  if (rc == 0) rc = luapool_submit(lp, "main", argc - 2, (const char *const *)argv + 2);
  if (rc == 0) rc = luapool_wait(lp, 60);

  /* total({words...}): the arguments as a Lua table, the result through a
   * future. */
  luapool_values *args = rc == 0 ? luapool_values_new() : NULL;
  luapool_future *f = NULL;
  if (rc == 0 && !args) rc = LUAPOOL_ENOMEM;
  if (rc == 0) rc = luapool_values_table(args, (uint32_t)(argc - 2), 0);
  for (int i = 2; rc == 0 && i < argc; i++) rc = luapool_values_string(args, argv[i]);
  if (rc == 0) rc = luapool_submit_values(lp, "total", args, &f);
  if (rc == 0) rc = luapool_future_wait(f, 60);
  if (rc == 0) printf("total %s\n", luapool_future_text(f, NULL));
  if (rc != 0) fprintf(stderr, "host: %s: %s\n", luapool_strerror(rc), luapool_errmsg(lp));
  luapool_future_free(f);
  luapool_values_free(args);
  luapool_close(lp);
  return rc == 0 ? 0 : 1;
}
