/*
 * hint.c - the "did you mean" of `luapool check`: of the names a table
 * has, the one closest to a misspelt name, by edit distance with adjacent
 * transpositions ("spwan" is one edit from "spawn").
 */
#include <string.h>

#include <lua.h>

#include "check.h"

/* Edit distance with adjacent transpositions ("spwan" is one from
 * "spawn"); names longer than 63 bytes are not compared. */
static size_t distance(const char *a, size_t n, const char *b, size_t m) {
  if (n > 63 || m > 63) return (size_t)-1;
  size_t d[64][64];
  for (size_t i = 0; i <= n; i++) d[i][0] = i;
  for (size_t j = 0; j <= m; j++) d[0][j] = j;
  for (size_t i = 1; i <= n; i++)
    for (size_t j = 1; j <= m; j++) {
      size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
      if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
          d[i - 2][j - 2] + 1 < best)
        best = d[i - 2][j - 2] + 1;
      d[i][j] = best;
    }
  return d[n][m];
}

/* Pushes the key of tables t1/t2 (0: none) closest to name, or nil if none
 * is close: at most one edit for short names, two from five letters, three
 * from eight. Ties go to the name that sorts first, so the hint does not
 * depend on the order of a table. */
static void push_closest(lua_State *L, lp_str name, int t1, int t2) {
  size_t most = name.len < 5 ? 1 : name.len < 8 ? 2 : 3, best = most + 1;
  lua_pushnil(L); /* the best so far */
  int ts[2] = {t1, t2};
  for (int i = 0; i < 2; i++) {
    if (!ts[i]) continue;
    lua_pushnil(L);
    while (lua_next(L, ts[i])) {
      lua_pop(L, 1);
      if (lua_type(L, -1) != LUA_TSTRING) continue;
      size_t len;
      const char *k = lua_tolstring(L, -1, &len);
      size_t d = distance(name.s, name.len, k, len);
      if (d == 0 || d > best || (d == best && strcmp(k, lua_tostring(L, -3)) >= 0)) continue;
      best = d;
      lua_pushvalue(L, -1);
      lua_replace(L, -3);
    }
  }
}

/* Pushes " (did you mean 'x<rest>'?)" for the closest name, or "". */
void lp_hint_push(lua_State *L, lp_str name, int t1, int t2, const char *rest) {
  push_closest(L, name, t1, t2);
  if (lua_isnil(L, -1))
    lua_pushliteral(L, "");
  else
    lua_pushfstring(L, " (did you mean '%s%s'?)", lua_tostring(L, -1), rest);
  lua_remove(L, -2);
}
