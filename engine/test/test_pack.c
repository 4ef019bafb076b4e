/*
 * test_pack.c - the value codec: round trips, refusals and their messages,
 * the C builders, and a decoder that must survive any bytes at all.
 *
 * Values are built in Lua and compared in Lua by deq() below, which checks
 * subtypes (3 vs 3.0), NaN, -0.0 and the shape of the table graph: a table
 * reached twice must decode as one table, and distinct tables as distinct ones.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "check.h"
#include "pack.h"

/* deq(a, b, m) compares two values; m maps tables of a to tables of b and
 * back, so identity (sharing, cycles) must match as well as contents. A table
 * key of a is matched to a table key of b by trial, which is a search with a
 * step budget; DEQ_AMBIGUOUS says the search had a choice or ran out, so that
 * a mismatch proves nothing. fuzz_pack.c holds the same code. */
static const char *const helpers =
    "local function copy(m)\n"
    "  local ab, ba = {}, {}\n"
    "  for k, v in next, m.ab do ab[k] = v end\n"
    "  for k, v in next, m.ba do ba[k] = v end\n"
    "  return {ab = ab, ba = ba}\n"
    "end\n"
    "local steps = 0\n"
    "local deq\n"
    "function deq(a, b, m)\n"
    "  steps = steps + 1\n"
    "  if steps > 100000 then DEQ_AMBIGUOUS = true return false end\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) == 'number' then\n"
    "    if math.type(a) ~= math.type(b) then return false end\n"
    "    if a ~= a then return b ~= b end\n"
    "    if a == 0 and b == 0 then return 1/a == 1/b end\n"
    "    return a == b\n"
    "  end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  if m.ab[a] ~= nil then return m.ab[a] == b end\n"
    "  if m.ba[b] ~= nil then return false end\n"
    "  m.ab[a], m.ba[b] = b, a\n"
    "  local na, nb, akeys, bkeys = 0, 0, {}, {}\n"
    "  for k in next, b do\n"
    "    nb = nb + 1\n"
    "    if type(k) == 'table' then bkeys[#bkeys + 1] = k end\n"
    "  end\n"
    "  for k, v in next, a do\n"
    "    na = na + 1\n"
    "    if type(k) == 'table' then akeys[#akeys + 1] = k\n"
    "    else\n"
    "      local w = rawget(b, k)\n"
    "      if w == nil or not deq(v, w, m) then return false end\n"
    "    end\n"
    "  end\n"
    "  if na ~= nb or #akeys ~= #bkeys then return false end\n"
    "  local used = {}\n"
    "  for _, ka in ipairs(akeys) do\n"
    "    local kb = m.ab[ka]\n"
    "    if kb ~= nil then\n"
    "      if used[kb] or rawget(b, kb) == nil or not deq(a[ka], b[kb], m) then return false end\n"
    "      used[kb] = true\n"
    "    else\n"
    "      local found, fk, nfound = nil, nil, 0\n"
    "      for _, c in ipairs(bkeys) do\n"
    "        if not used[c] and m.ba[c] == nil then\n"
    "          local trial = copy(m)\n"
    "          if deq(ka, c, trial) and deq(a[ka], b[c], trial) then\n"
    "            nfound = nfound + 1\n"
    "            if not found then found, fk = trial, c end\n"
    "          end\n"
    "        end\n"
    "      end\n"
    "      if nfound > 1 then DEQ_AMBIGUOUS = true end\n"
    "      if not found then return false end\n"
    "      m.ab, m.ba, used[fk] = found.ab, found.ba, true\n"
    "    end\n"
    "  end\n"
    "  return true\n"
    "end\n"
    "function deq_values(n, ...)\n"
    "  local m = {ab = {}, ba = {}}\n"
    "  steps, DEQ_AMBIGUOUS = 0, false\n"
    "  for i = 1, n do\n"
    "    local a, b = (select(i, ...)), (select(n + i, ...))\n"
    "    if not deq(a, b, m) then return false end\n"
    "  end\n"
    "  return true\n"
    "end\n"
    "function nest(n)\n"
    "  local t = {}\n"
    "  for i = 2, n do t = {t} end\n"
    "  return t\n"
    "end\n";

static lua_State *newstate(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  if (luaL_dostring(L, helpers)) {
    fprintf(stderr, "helpers: %s\n", lua_tostring(L, -1));
    exit(2);
  }
  return L;
}

/* Runs a chunk and leaves its results on the stack; returns how many. */
static int run(lua_State *L, const char *code) {
  int top = lua_gettop(L);
  if (luaL_dostring(L, code)) {
    fprintf(stderr, "lua error in %s: %s\n", code, lua_tostring(L, -1));
    exit(2);
  }
  return lua_gettop(L) - top;
}

/* Are the n values at a and the n values at b deeply equal? */
static int values_equal(lua_State *L, int a, int b, int n) {
  a = lua_absindex(L, a);
  b = lua_absindex(L, b);
  luaL_checkstack(L, 2 * n + 3, NULL);
  lua_getglobal(L, "deq_values");
  lua_pushinteger(L, n);
  for (int i = 0; i < n; i++) lua_pushvalue(L, a + i);
  for (int i = 0; i < n; i++) lua_pushvalue(L, b + i);
  lua_call(L, 2 * n + 1, 1);
  int r = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return r;
}

static lua_State *L2; /* a second state: values must survive a change of state */

/* Packs the results of code, unpacks them into L and into L2 and back, and
 * checks all three copies are equal. Returns 0 when all is well. */
static int roundtrip_ctx(lua_State *L, const char *code, const lp_pack_ctx *ctx) {
  char err[256];
  int top = lua_gettop(L), top2 = lua_gettop(L2), n = run(L, code), nv = -1, bad = 0;
  lp_buf b, b2;
  lp_buf_init(&b);
  lp_buf_init(&b2);
  if (lp_pack_values(L, top + 1, n, &b, ctx, err, sizeof err)) {
    fprintf(stderr, "pack %s: %s\n", code, err);
    bad = 1;
    goto done;
  }
  if (lua_gettop(L) != top + n) bad = 2;
  if (lp_pack_validate(b.data, b.len, err, sizeof err)) bad = 3;
  if (lp_unpack_values(L, b.data, b.len, ctx, &nv, err, sizeof err) || nv != n)
    bad = 4;
  else if (!values_equal(L, top + 1, top + n + 1, n))
    bad = 5;
  lua_settop(L, top + n);
  if (lp_unpack_values(L2, b.data, b.len, ctx, &nv, err, sizeof err) || nv != n)
    bad = 6;
  else if (lp_pack_values(L2, top2 + 1, n, &b2, ctx, err, sizeof err))
    bad = 7;
  else if (lp_unpack_values(L, b2.data, b2.len, ctx, &nv, err, sizeof err) || nv != n)
    bad = 8;
  else if (!values_equal(L, top + 1, top + n + 1, n))
    bad = 9;
  if (bad) fprintf(stderr, "roundtrip %s: failed at step %d (%s)\n", code, bad, err);
done:
  lua_settop(L, top);
  lua_settop(L2, top2);
  lp_buf_free(&b);
  lp_buf_free(&b2);
  return bad;
}

static int roundtrip(lua_State *L, const char *code) { return roundtrip_ctx(L, code, NULL); }

/* Packs the results of code and expects a refusal; returns its message. */
static const char *refusal(lua_State *L, const char *code, const lp_pack_ctx *ctx) {
  static char err[256];
  int top = lua_gettop(L), n = run(L, code);
  lp_buf b;
  lp_buf_init(&b);
  lp_buf_append(&b, "xyz", 3);
  strcpy(err, "(accepted)");
  int r = lp_pack_values(L, top + 1, n, &b, ctx, err, sizeof err);
  CHECK_EQ(r, -1);
  CHECK_EQ(lua_gettop(L), top + n);
  CHECK(b.len == 3 && memcmp(b.data, "xyz", 3) == 0);
  lua_settop(L, top);
  lp_buf_free(&b);
  return err;
}

static void test_buf(void) {
  lp_buf a, b;
  lp_buf_init(&a);
  CHECK(a.data == a.inline_ && a.len == 0 && a.cap == LP_BUF_INLINE);
  CHECK_EQ(lp_buf_append(&a, "hello", 5), 0);
  CHECK(a.data == a.inline_);
  lp_buf_move(&b, &a); /* inline contents must be copied, not pointed at */
  CHECK(b.data == b.inline_ && b.len == 5 && memcmp(b.data, "hello", 5) == 0);
  CHECK(a.data == a.inline_ && a.len == 0);
  for (int i = 0; i < 100; i++) CHECK_EQ(lp_buf_append(&b, "0123456789", 10), 0);
  CHECK(b.data != b.inline_ && b.len == 1005 && b.cap >= 1005);
  CHECK(memcmp(b.data, "hello0123456789", 15) == 0 && memcmp(b.data + 995, "0123456789", 10) == 0);
  char *heap = b.data;
  lp_buf_move(&a, &b);
  CHECK(a.data == heap && a.len == 1005 && b.data == b.inline_ && b.len == 0);
  size_t cap = a.cap;
  lp_buf_reset(&a);
  CHECK(a.len == 0 && a.cap == cap && a.data == heap);
  CHECK_EQ(lp_buf_append(&a, "z", 1), 0);
  CHECK_EQ(lp_buf_reserve(&a, SIZE_MAX), -1); /* len + extra overflows */
  CHECK(a.len == 1 && a.data[0] == 'z');
  CHECK_EQ(lp_buf_append(&a, NULL, 0), 0);
  lp_buf_free(&a);
  lp_buf_free(&a); /* free leaves an empty buffer, so twice is harmless */
  lp_buf_free(&b);
}

static void test_scalars(lua_State *L) {
  CHECK_EQ(roundtrip(L, "return"), 0);
  CHECK_EQ(roundtrip(L, "return nil, true, false, nil"), 0);
  CHECK_EQ(roundtrip(L, "return 0, 1, -1, 63, 64, -64, -65, 127, 128, 300, -300"), 0);
  CHECK_EQ(roundtrip(L, "return math.maxinteger, math.mininteger, math.maxinteger - 1"), 0);
  CHECK_EQ(roundtrip(L, "return 3, 3.0, -0.0, 0.0, 0.1, 1/0, -1/0, 0/0, math.pi, 2^53, 2^63"), 0);
  CHECK_EQ(roundtrip(L, "return math.huge, -math.huge, 5e-324, 1.7976931348623157e308"), 0);
  CHECK_EQ(roundtrip(L, "return '', 'a', 'a\\0b', '\\0', string.rep('x', 200)"), 0);
  CHECK_EQ(roundtrip(L,
                     "local t = {} for i = 0, 255 do t[#t + 1] = string.char(i) end\n"
                     "return table.concat(t), table.concat(t):reverse()"),
           0);
  CHECK_EQ(roundtrip(L, "return string.rep('\\0\\1\\255binary', 1024 * 1024 // 9)"), 0);

  /* The subtypes, checked from C as well. */
  char err[128];
  int top = lua_gettop(L), nv;
  lp_buf b;
  lp_buf_init(&b);
  run(L, "return 3, 3.0, -0.0, 0/0, 'a\\0b'");
  CHECK_EQ(lp_pack_values(L, top + 1, 5, &b, NULL, err, sizeof err), 0);
  lua_settop(L, top);
  CHECK_EQ(lp_unpack_values(L, b.data, b.len, NULL, &nv, err, sizeof err), 0);
  CHECK_EQ(nv, 5);
  CHECK(lua_isinteger(L, top + 1) && lua_tointeger(L, top + 1) == 3);
  CHECK(!lua_isinteger(L, top + 2) && lua_tonumber(L, top + 2) == 3.0);
  CHECK(lua_tonumber(L, top + 3) == 0.0 && signbit(lua_tonumber(L, top + 3)));
  CHECK(isnan(lua_tonumber(L, top + 4)));
  size_t len;
  const char *s = lua_tolstring(L, top + 5, &len);
  CHECK(len == 3 && memcmp(s, "a\0b", 3) == 0);
  lua_settop(L, top);
  lp_buf_free(&b);
}

static void test_tables(lua_State *L) {
  CHECK_EQ(roundtrip(L, "return {}, {1, 2, 3}, {a = 1, b = 'x'}, {1, 2, x = {y = {z = true}}}"), 0);
  CHECK_EQ(roundtrip(L, "return {1, nil, 3}, {nil, nil, 3}, {[1] = 1, [1000000] = 2}"), 0);
  CHECK_EQ(roundtrip(L, "return {[2^53] = 1, [-1] = 2, [0] = 3, [2.5] = 4, [true] = 5, [''] = 6}"),
           0);
  CHECK_EQ(roundtrip(L,
                     "local t = {} for i = 1, 1000 do t[i] = i * 1.5 end\n"
                     "for i = 1, 1000 do t['k' .. i] = {i} end return t"),
           0);
  CHECK_EQ(roundtrip(L, "local s = {1} return {a = s, b = s, c = {s, s}}"), 0);
  CHECK_EQ(roundtrip(L, "local t = {} t.self = t return t"), 0);
  CHECK_EQ(roundtrip(L, "local a, b = {}, {} a.b, b.a = b, a return a, b"), 0);
  CHECK_EQ(roundtrip(L, "local t = {} t[t] = t return t"), 0);
  CHECK_EQ(roundtrip(L, "local k = {1} return {[k] = k, [{2}] = {k}}, k"), 0);
  CHECK_EQ(roundtrip(L, "local s = {} return s, {s}, s"), 0);
  CHECK_EQ(roundtrip(L, "return setmetatable({1, x = 2}, {__index = function() end})"), 0);
  CHECK_EQ(roundtrip(L, "return nest(199), nest(200)"), 0);
  CHECK_EQ(roundtrip(L,
                     "local t = nest(200) local u = t while u[1] do u = u[1] end u[1] = t\n"
                     "return t"),
           0);

  /* The same table twice among the values is one table after decoding. */
  char err[128];
  int top = lua_gettop(L), nv;
  lp_buf b;
  lp_buf_init(&b);
  run(L, "local t = {} t.self = t return t, t, {t}");
  CHECK_EQ(lp_pack_values(L, -3, 3, &b, NULL, err, sizeof err), 0);
  CHECK_EQ(lua_gettop(L), top + 3);
  lua_settop(L, top);
  CHECK_EQ(lp_unpack_values(L, b.data, b.len, NULL, &nv, err, sizeof err), 0);
  CHECK_EQ(lua_gettop(L), top + 3);
  CHECK(lua_rawequal(L, top + 1, top + 2));
  lua_getfield(L, top + 1, "self");
  CHECK(lua_rawequal(L, top + 1, -1));
  lua_rawgeti(L, top + 3, 1);
  CHECK(lua_rawequal(L, top + 1, -1));
  lua_settop(L, top);
  lp_buf_free(&b);

  /* Appending: a second message after a first, each decodable alone. */
  lp_buf_init(&b);
  run(L, "return 'first', {1}");
  CHECK_EQ(lp_pack_values(L, top + 1, 1, &b, NULL, err, sizeof err), 0);
  size_t first = b.len;
  CHECK_EQ(lp_pack_values(L, top + 2, 1, &b, NULL, err, sizeof err), 0);
  lua_settop(L, top);
  CHECK_EQ(lp_pack_validate(b.data, first, err, sizeof err), 0);
  CHECK_EQ(lp_pack_validate(b.data + first, b.len - first, err, sizeof err), 0);
  CHECK_EQ(lp_pack_validate(b.data, b.len, err, sizeof err), -1);
  CHECK_STR(err, "bad message: trailing bytes (at byte 9)");
  lp_buf_free(&b);
}

static const char *names_null(lua_State *L, int idx, void *ud) {
  (void)L, (void)idx, (void)ud;
  return NULL;
}

static void test_refusals(lua_State *L) {
  lp_pack_ctx c1 = {NULL, NULL, NULL, 1}, c2 = {names_null, NULL, NULL, 2};
  lp_pack_ctx c3 = {NULL, NULL, NULL, 3};
  CHECK_STR(refusal(L, "return print", &c1), "argument 1: cannot send a function");
  CHECK_STR(refusal(L, "return print", NULL), "argument 1: cannot send a function");
  CHECK_STR(refusal(L, "return 1, print", &c2), "argument 3: cannot send a function");
  CHECK_STR(refusal(L, "return coroutine.create(print)", &c3), "argument 3: cannot send a thread");
  CHECK_STR(refusal(L, "return 1, 2, io.stdout", &c1), "argument 3: cannot send a userdata");
  CHECK_STR(refusal(L, "return 1, {cfg = {cb = print}}", &c1),
            "argument 2 (at .cfg.cb): cannot send a function");
  CHECK_STR(refusal(L, "return {x = {y = {[4] = coroutine.create(print)}}}", &c2),
            "argument 2 (at .x.y[4]): cannot send a thread");
  CHECK_STR(refusal(L, "return {1, 2, print}", &c1), "argument 1 (at [3]): cannot send a function");
  CHECK_STR(refusal(L, "return {[2.5] = print}", &c1),
            "argument 1 (at [2.5]): cannot send a function");
  CHECK_STR(refusal(L, "return {[-2^63] = print}", &c1),
            "argument 1 (at [-9223372036854775808]): cannot send a function");
  CHECK_STR(refusal(L, "return {[2^63] = print}", &c1),
            "argument 1 (at [9.2233720368548e+18]): cannot send a function");
  CHECK_STR(refusal(L, "return {[1/0] = print}", &c1),
            "argument 1 (at [inf]): cannot send a function");
  CHECK_STR(refusal(L, "return {['a b'] = print}", &c1),
            "argument 1 (at [\"a b\"]): cannot send a function");
  CHECK_STR(refusal(L, "return {['end'] = print}", &c1),
            "argument 1 (at [\"end\"]): cannot send a function");
  CHECK_STR(refusal(L, "return {['a\"b\\n\\0c\\0001\\\\'] = print}", &c1),
            "argument 1 (at [\"a\\\"b\\n\\0c\\0001\\\\\"]): cannot send a function");
  CHECK_STR(refusal(L, "return {[true] = print}", &c1),
            "argument 1 (at [true]): cannot send a function");
  CHECK_STR(refusal(L, "return {[{}] = print}", &c1),
            "argument 1 (at [table]): cannot send a function");
  CHECK_STR(refusal(L, "return {[print] = 1}", &c1),
            "argument 1 (at (key)): cannot send a function");
  CHECK_STR(refusal(L, "return {t = {[{f = print}] = 1}}", &c1),
            "argument 1 (at .t(key).f): cannot send a function");
  CHECK_STR(refusal(L, "return {_x9 = {io.stdout}}", &c1),
            "argument 1 (at ._x9[1]): cannot send a userdata");

  /* Long keys are cut; the rest of the path is intact. */
  char want[256];
  snprintf(want, sizeof want, "argument 1 (at [\"%.51s...\"].z): cannot send a function",
           "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
  CHECK_STR(refusal(L, "return {[string.rep('x', 100)] = {z = print}}", &c1), want);

  /* Nesting: 201 tables deep is refused; the long path keeps its two ends. */
  strcpy(want, "argument 1 (at ");
  for (int i = 0; i < 13; i++) strcat(want, "[1]");
  strcat(want, "...");
  for (int i = 0; i < 24; i++) strcat(want, "[1]");
  strcat(want, "): table nesting deeper than 200");
  CHECK_STR(refusal(L, "return nest(201)", &c1), want);
  CHECK_STR(refusal(L, "return 1, {a = {b = nest(199)}}", &c1),
            "argument 2 (at "
            ".a.b[1][1][1][1][1][1][1][1][1][1][1][1]...[1][1][1][1][1][1][1][1][1][1][1][1]"
            "[1][1][1][1][1][1][1][1][1][1][1][1]): table nesting deeper than 200");

  /* A refusal leaves out as it was, down to its storage: a caller that
   * raises at once must not leak a buffer grown along the way. */
  {
    lp_buf o;
    char e[128];
    int t0 = lua_gettop(L), n = run(L, "return 1, string.rep('x', 1000), {t = print}");
    lp_buf_init(&o);
    lp_buf_append(&o, "ab", 2);
    CHECK_EQ(lp_pack_values(L, t0 + 1, n, &o, NULL, e, sizeof e), -1);
    CHECK_STR(e, "argument 3 (at .t): cannot send a function");
    CHECK(o.data == o.inline_ && o.len == 2 && memcmp(o.data, "ab", 2) == 0);
    lua_settop(L, t0);
  }

  /* Light userdata, pushed from C. */
  char err[128];
  int top = lua_gettop(L);
  lp_buf b;
  lp_buf_init(&b);
  lua_pushinteger(L, 1);
  lua_pushlightuserdata(L, &b);
  CHECK_EQ(lp_pack_values(L, top + 1, 2, &b, &c3, err, sizeof err), -1);
  CHECK_STR(err, "argument 4: cannot send a userdata");
  CHECK_EQ(b.len, 0);
  CHECK_EQ(lua_gettop(L), top + 2);
  /* A refusal with no room for the message still fails cleanly. */
  CHECK_EQ(lp_pack_values(L, top + 1, 2, &b, &c3, NULL, 0), -1);
  CHECK_EQ(lp_pack_values(L, top + 1, 2, &b, &c3, err, 5), -1);
  CHECK_STR(err, "argu");
  lua_settop(L, top);

  /* Too many values. */
  luaL_checkstack(L, 100002, NULL);
  for (int i = 0; i < 100001; i++) lua_pushinteger(L, i);
  CHECK_EQ(lp_pack_values(L, top + 1, 100001, &b, NULL, err, sizeof err), -1);
  CHECK_STR(err, "too many values (100001, at most 100000)");
  CHECK_EQ(lp_pack_values(L, top + 1, 100000, &b, NULL, err, sizeof err), 0);
  lua_settop(L, top);
  int nv;
  CHECK_EQ(lp_unpack_values(L, b.data, b.len, NULL, &nv, err, sizeof err), 0);
  CHECK_EQ(nv, 100000);
  CHECK_EQ(lua_tointeger(L, -1), 99999);
  lua_settop(L, top);
  lp_buf_free(&b);
}

/* Task functions: the global TASKS maps name -> function, NAMES the reverse. */
static const char *names_fn(lua_State *L, int idx, void *ud) {
  (void)ud;
  lua_getglobal(L, "NAMES");
  lua_pushvalue(L, idx);
  lua_rawget(L, -2);
  const char *s = lua_tostring(L, -1); /* held by NAMES, so it outlives the pop */
  lua_pop(L, 2);
  return s;
}

static int push_fn(lua_State *L, const char *name, size_t len, void *ud) {
  (void)ud;
  lua_getglobal(L, "TASKS");
  lua_pushlstring(L, name, len);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}

static int push_nil(lua_State *L, const char *name, size_t len, void *ud) {
  (void)name, (void)len, (void)ud;
  lua_pushnil(L);
  return 0;
}

static void test_functions(lua_State *L) {
  const char *setup =
      "TASKS = {work = function() end, ['ns.other'] = function() end}\n"
      "NAMES = {} for k, v in pairs(TASKS) do NAMES[v] = k end";
  run(L, setup);
  run(L2, setup);
  lp_pack_ctx ctx = {names_fn, push_fn, NULL, 1};
  CHECK_EQ(roundtrip_ctx(L, "return TASKS.work, {f = TASKS['ns.other'], [TASKS.work] = 1}", &ctx),
           0);
  CHECK_STR(refusal(L, "return TASKS.work, {f = print}", &ctx),
            "argument 2 (at .f): cannot send a function");

  char err[128];
  int top = lua_gettop(L), nv;
  lp_buf b;
  lp_buf_init(&b);
  run(L, "return 1, {TASKS['ns.other']}");
  CHECK_EQ(lp_pack_values(L, top + 1, 2, &b, &ctx, err, sizeof err), 0);
  lua_settop(L, top);
  /* Without fn_push the name arrives as a string. */
  CHECK_EQ(lp_unpack_values(L, b.data, b.len, NULL, &nv, err, sizeof err), 0);
  lua_rawgeti(L, top + 2, 1);
  CHECK_STR(lua_tostring(L, -1), "ns.other");
  lua_settop(L, top);
  /* A state that does not know the function refuses, naming it. */
  run(L2, "TASKS['ns.other'] = nil");
  int top2 = lua_gettop(L2);
  CHECK_EQ(lp_unpack_values(L2, b.data, b.len, &ctx, &nv, err, sizeof err), -1);
  CHECK_STR(err, "cannot restore function \"ns.other\"");
  CHECK_EQ(lua_gettop(L2), top2);
  CHECK_EQ(lp_pack_validate(b.data, b.len, err, sizeof err), 0);
  lp_buf_free(&b);

  /* A restored function that comes back nil cannot be a key. */
  lp_pack_ctx nilctx = {NULL, push_nil, NULL, 1};
  static const char msg[] = "\x01\x01\x06\x00\x01\x08\x01x\x01";
  CHECK_EQ(lp_unpack_values(L, msg, sizeof msg - 1, &nilctx, &nv, err, sizeof err), -1);
  CHECK_STR(err, "bad message: function name restored as a nil or NaN key (at byte 8)");
  CHECK_EQ(lua_gettop(L), top);
  CHECK_EQ(lp_unpack_values(L, msg, sizeof msg - 1, NULL, &nv, err, sizeof err), 0);
  lua_settop(L, top);
}

static void test_builders(lua_State *L) {
  char err[128];
  int top = lua_gettop(L), nv;
  lp_buf b;
  lp_buf_init(&b);
  CHECK_EQ(lp_pack_begin(&b, 7), 0);
  CHECK_EQ(lp_pack_put_nil(&b), 0);
  CHECK_EQ(lp_pack_put_bool(&b, 1), 0);
  CHECK_EQ(lp_pack_put_int(&b, -5), 0);
  CHECK_EQ(lp_pack_put_float(&b, 2.5), 0);
  CHECK_EQ(lp_pack_put_table(&b, 2, 1), 0);
  CHECK_EQ(lp_pack_put_string(&b, "a", 1), 0);
  CHECK_EQ(lp_pack_put_int(&b, INT64_MIN), 0);
  CHECK_EQ(lp_pack_put_string(&b, "k", 1), 0);
  CHECK_EQ(lp_pack_put_table(&b, 0, 0), 0);
  CHECK_EQ(lp_pack_put_string(&b, NULL, 0), 0);
  CHECK_EQ(lp_pack_put_bool(&b, 0), 0);
  CHECK_EQ(lp_pack_validate(b.data, b.len, err, sizeof err), 0);
  CHECK_EQ(lp_unpack_values(L, b.data, b.len, NULL, &nv, err, sizeof err), 0);
  CHECK_EQ(nv, 7);
  run(L, "return nil, true, -5, 2.5, {'a', math.mininteger, k = {}}, '', false");
  CHECK(values_equal(L, top + 1, top + 8, 7));
  lua_settop(L, top);

  /* The header's table layout again, nested 200 deep (fine) and 201 (not). */
  for (int depth = 199; depth <= 201; depth++) {
    lp_buf_reset(&b);
    lp_pack_begin(&b, 1);
    for (int i = 0; i < depth; i++) lp_pack_put_table(&b, i + 1 < depth, 0);
    int want = depth <= 200 ? 0 : -1;
    CHECK_EQ(lp_pack_validate(b.data, b.len, err, sizeof err), want);
    CHECK_EQ(lp_unpack_values(L, b.data, b.len, NULL, &nv, err, sizeof err), want);
    CHECK_EQ(lua_gettop(L), top + (want == 0));
    if (want) CHECK_STR(err, "bad message: table nesting deeper than 200 (at byte 603)");
    lua_settop(L, top);
  }
  lp_buf_free(&b);
}

static void test_single_string(lua_State *L) {
  char err[128];
  const char *s;
  size_t len;
  int top = lua_gettop(L);
  lp_buf b;
  lp_buf_init(&b);
  run(L, "return 'hello', '', 1, string.rep('y', 100000)");
  lp_pack_values(L, top + 1, 1, &b, NULL, err, sizeof err);
  CHECK_EQ(lp_pack_single_string(b.data, b.len, &s, &len), 1);
  CHECK(len == 5 && memcmp(s, "hello", 5) == 0);
  CHECK_EQ(lp_pack_single_string(b.data, b.len - 1, &s, &len), 0);
  lp_buf_append(&b, "", 1);
  CHECK_EQ(lp_pack_single_string(b.data, b.len, &s, &len), 0);
  lp_buf_reset(&b);
  lp_pack_values(L, top + 2, 1, &b, NULL, err, sizeof err);
  CHECK_EQ(lp_pack_single_string(b.data, b.len, &s, &len), 1);
  CHECK_EQ(len, 0);
  lp_buf_reset(&b);
  lp_pack_values(L, top + 3, 1, &b, NULL, err, sizeof err);
  CHECK_EQ(lp_pack_single_string(b.data, b.len, &s, &len), 0);
  lp_buf_reset(&b);
  lp_pack_values(L, top + 1, 2, &b, NULL, err, sizeof err);
  CHECK_EQ(lp_pack_single_string(b.data, b.len, &s, &len), 0);
  lp_buf_reset(&b);
  lp_pack_values(L, top + 4, 1, &b, NULL, err, sizeof err);
  CHECK_EQ(lp_pack_single_string(b.data, b.len, &s, &len), 1);
  CHECK(len == 100000 && s[0] == 'y' && s[99999] == 'y');
  lp_buf_reset(&b);
  lp_pack_begin(&b, 1);
  lp_pack_put_string(&b, "built", 5);
  CHECK_EQ(lp_pack_single_string(b.data, b.len, &s, &len), 1);
  CHECK(len == 5 && memcmp(s, "built", 5) == 0);
  CHECK_EQ(lp_pack_single_string(NULL, 0, &s, &len), 0);
  CHECK_EQ(lp_pack_single_string("\x01\x01\x05\x80\x00", 5, &s, &len), 0); /* overlong */
  CHECK_EQ(lp_pack_single_string("\x02\x01\x05\x00", 4, &s, &len), 0);     /* version */
  lua_settop(L, top);
  lp_buf_free(&b);
}

static void test_malformed(lua_State *L) {
  static const struct {
    const char *bytes;
    size_t len;
    const char *err;
  } cases[] = {
      {"", 0, "bad message: empty"},
      {"\x02\x00", 2, "bad message: version 2, expected 1"},
      {"\x01", 1, "bad message: truncated (at byte 1)"},
      {"\x01\x01", 2, "bad message: truncated (at byte 2)"},
      {"\x01\x01\x09", 3, "bad message: unknown tag (at byte 2)"},
      {"\x01\x01\x03\x80\x00", 5, "bad message: overlong varint (at byte 3)"},
      {"\x01\x01\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02", 13,
       "bad message: varint overflows 64 bits (at byte 3)"},
      {"\x01\x01\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 13, NULL},
      {"\x01\x01\x04\x00\x00\x00\x00\x00\x00\xf0", 10, "bad message: truncated (at byte 3)"},
      {"\x01\x01\x05\005abcd", 8, "bad message: string longer than the message (at byte 4)"},
      {"\x01\x01\x07\x00", 4, "bad message: back-reference to a table not yet seen (at byte 4)"},
      {"\x01\x01\x06\x00\x01\x07\x00\x01", 8, NULL},
      {"\x01\x01\x06\x00\x01\x07\x01\x01", 8,
       "bad message: back-reference to a table not yet seen (at byte 7)"},
      {"\x01\x01\x06\x00\x01\x00\x01", 7, "bad message: nil table key (at byte 6)"},
      {"\x01\x01\x06\x00\x01\x04\x00\x00\x00\x00\x00\x00\xf8\x7f\x01", 15,
       "bad message: NaN table key (at byte 6)"},
      {"\x01\x01\x06\x05\x00\x00\x00", 7,
       "bad message: table size exceeds the message (at byte 5)"},
      {"\x01\x01\x06\x00\x02\x01\x01\x01", 8,
       "bad message: table size exceeds the message (at byte 5)"},
      {"\x01\x02\x00", 3, "bad message: truncated (at byte 2)"},
      {"\x01\x01\x00\x00", 4, "bad message: trailing bytes (at byte 3)"},
      {"\x01\x00", 2, NULL},
      {"\x01\xa1\x8d\x06", 4, "bad message: too many values (at byte 4)"},
  };
  int top = lua_gettop(L);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char e1[128] = "", e2[128] = "";
    int nv = -1;
    int r1 = lp_pack_validate(cases[i].bytes, cases[i].len, e1, sizeof e1);
    int r2 = lp_unpack_values(L, cases[i].bytes, cases[i].len, NULL, &nv, e2, sizeof e2);
    CHECK_EQ(r1, r2);
    if (cases[i].err) {
      CHECK_EQ(r2, -1);
      CHECK_STR(e1, cases[i].err);
      CHECK_STR(e2, cases[i].err);
      CHECK_EQ(lua_gettop(L), top);
    } else {
      CHECK_EQ(r2, 0);
      CHECK_EQ(lua_gettop(L), top + nv);
    }
    lua_settop(L, top);
  }
}

/* Feeds bytes to both decoders: they must agree, and the stack must be
 * exactly as found (or grown by the values on success). Returns 1 when accepted. */
static int feed(lua_State *L, const char *p, size_t len) {
  char e1[128], e2[128];
  int top = lua_gettop(L), nv = -1;
  int r1 = lp_pack_validate(p, len, e1, sizeof e1);
  int r2 = lp_unpack_values(L, p, len, NULL, &nv, e2, sizeof e2);
  CHECK_EQ(r1, r2);
  if (r1 != r2) fprintf(stderr, "  validate: %s\n  unpack: %s\n", r1 ? e1 : "ok", r2 ? e2 : "ok");
  if (r2 == 0)
    CHECK_EQ(lua_gettop(L), top + nv);
  else
    CHECK_EQ(lua_gettop(L), top);
  lua_settop(L, top);
  return r2 == 0;
}

/* Decodes an accepted message, packs the values again and decodes that:
 * the two decodings must be equal. Returns 0 when they are. */
static int recode(lua_State *L, const char *p, size_t len) {
  char err[128];
  int top = lua_gettop(L), n, n2, r = 0;
  lp_buf b;
  lp_buf_init(&b);
  if (lp_unpack_values(L, p, len, NULL, &n, err, sizeof err)) return 1;
  if (lp_pack_values(L, top + 1, n, &b, NULL, err, sizeof err))
    r = 2;
  else if (lp_unpack_values(L, b.data, b.len, NULL, &n2, err, sizeof err) || n2 != n)
    r = 3;
  else if (!values_equal(L, top + 1, top + n + 1, n)) {
    lua_getglobal(L, "DEQ_AMBIGUOUS");
    r = lua_toboolean(L, -1) ? 0 : 4;
  }
  lua_settop(L, top);
  lp_buf_free(&b);
  return r;
}

static uint64_t rng = 0x9e3779b97f4a7c15u;
static uint32_t rnd(void) { /* xorshift64*: deterministic, so failures replay */
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return (uint32_t)((rng * 0x2545f4914f6cdd1du) >> 32);
}

/* Appends a random well-formed value: the builders, plus back-references
 * and function names written by hand. */
static void gen_value(lp_buf *b, int depth, int iskey, uint32_t *ntables) {
  uint32_t r = rnd();
  switch (r % 9) {
    case 0:
      if (!iskey) {
        lp_pack_put_nil(b);
        break;
      }
      /* fall through - nil is no key */
    case 1: lp_pack_put_bool(b, (int)(r >> 8) & 1); break;
    case 2: {
      uint64_t hi = rnd(), lo = rnd(), u = (hi << 32 | lo) >> (rnd() % 64);
      lp_pack_put_int(b, (int64_t)((r >> 8) & 1 ? 0 - u : u));
      break;
    }
    case 3: {
      uint64_t hi = rnd(), lo = rnd(), u = hi << 32 | lo;
      double v;
      memcpy(&v, &u, 8);
      if (r & 0x100) v = (double)(int32_t)rnd() / 8;
      lp_pack_put_float(b, iskey && v != v ? 0.5 : v);
      break;
    }
    case 4: {
      char s[8];
      size_t len = rnd() % sizeof s;
      for (size_t i = 0; i < len; i++) s[i] = (char)("ab\0\xff"[rnd() % 4]);
      lp_pack_put_string(b, s, len);
      break;
    }
    case 5:
    case 6:
      if (depth < 5) {
        uint32_t narr = rnd() % 4, nhash = rnd() % 4;
        (*ntables)++;
        lp_pack_put_table(b, narr, nhash);
        for (uint32_t i = 0; i < narr; i++) gen_value(b, depth + 1, 0, ntables);
        for (uint32_t i = 0; i < nhash; i++) {
          gen_value(b, depth + 1, 1, ntables);
          gen_value(b, depth + 1, 0, ntables);
        }
        break;
      }
      /* fall through */
    case 7:
      if (*ntables) {
        unsigned char ref[2] = {7, (unsigned char)(rnd() % *ntables)};
        lp_buf_append(b, ref, 2);
        break;
      }
      /* fall through */
    default:
      lp_buf_append(b,
                    "\x08\x03"
                    "f.g",
                    5);
      break;
  }
}

static void test_robust(lua_State *L) {
  static const char *const sources[] = {
      "return 1, -2, 'three', 4.5, true, false, nil",
      "return {1, 2, {3, 4}, x = 'y', [2.5] = -0.0}",
      "local s = {'shared'} local t = {a = s, b = s, [s] = s} t.self = t return t, s",
      "return {[{1}] = {2}, [true] = 0/0, [''] = ''}, 2^63, math.mininteger",
      "return nest(12)",
      "return TASKS.work, {TASKS.work}",
  };
  lp_pack_ctx ctx = {names_fn, NULL, NULL, 1};
  char err[128];
  int top = lua_gettop(L);
  size_t ntrunc = 0, nflip = 0, accepted = 0;
  lp_buf b;
  lp_buf_init(&b);
  for (size_t i = 0; i < sizeof sources / sizeof sources[0]; i++) {
    int n = run(L, sources[i]);
    lp_buf_reset(&b);
    CHECK_EQ(lp_pack_values(L, top + 1, n, &b, &ctx, err, sizeof err), 0);
    lua_settop(L, top);
    CHECK(feed(L, b.data, b.len));
    /* Every proper prefix is incomplete, hence refused. */
    for (size_t len = 0; len < b.len; len++, ntrunc++) {
      char *copy = malloc(len + 1); /* exact size, so ASan sees any overread */
      memcpy(copy, b.data, len);
      CHECK(!feed(L, copy, len));
      free(copy);
    }
    static const unsigned char masks[] = {0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff};
    for (size_t at = 0; at < b.len; at++) {
      for (size_t m = 0; m < sizeof masks; m++, nflip++) {
        char *copy = malloc(b.len);
        memcpy(copy, b.data, b.len);
        copy[at] ^= (char)masks[m];
        feed(L, copy, b.len);
        free(copy);
      }
    }
  }
  /* Random bytes, most of them shaped like a message so they get past the
   * first checks: version 1, a small count, tags and small numbers. */
  for (int i = 0; i < 100000; i++) {
    unsigned char buf[64];
    size_t len = rnd() % sizeof buf;
    for (size_t j = 0; j < len; j++) {
      uint32_t r = rnd();
      buf[j] = (unsigned char)(r % 4 ? (r >> 8) % 10 : r >> 8);
    }
    if (len && rnd() % 8) buf[0] = 1;
    if (len > 1 && rnd() % 2) buf[1] = (unsigned char)(rnd() % 4);
    char *copy = malloc(len ? len : 1);
    memcpy(copy, buf, len);
    accepted += (size_t)feed(L, copy, len);
    free(copy);
  }
  /* Random well-formed messages (up to 127 tables, so one-byte references):
   * accepted as they are, and one mutation away, whatever happens, agreed on. */
  size_t mutated_ok = 0;
  for (int i = 0; i < 20000; i++) {
    uint32_t ntables = 0, n = rnd() % 4;
    lp_buf_reset(&b);
    lp_pack_begin(&b, n);
    for (uint32_t j = 0; j < n && ntables < 100; j++) gen_value(&b, 0, 0, &ntables);
    if (ntables >= 100) continue;
    CHECK(feed(L, b.data, b.len));
    CHECK_EQ(recode(L, b.data, b.len), 0);
    char *copy = malloc(b.len);
    memcpy(copy, b.data, b.len);
    size_t at = rnd() % b.len;
    copy[at] = (char)rnd();
    if (feed(L, copy, b.len)) {
      mutated_ok++;
      CHECK_EQ(recode(L, copy, b.len), 0);
    }
    free(copy);
  }
  printf(
      "decoder robustness: %zu truncations, %zu flips, 100000 random (%zu accepted), "
      "20000 generated (%zu still accepted after a mutation)\n",
      ntrunc, nflip, accepted, mutated_ok);
  lp_buf_free(&b);
}

static size_t nallocs;
static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud, (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  nallocs++;
  return realloc(ptr, nsize);
}

/* Packing scalars and strings creates no Lua object; the first table does. */
static void test_no_alloc(void) {
  char err[128];
  lua_State *L = lua_newstate(counting_alloc, NULL);
  lp_buf b;
  lp_buf_init(&b);
  lua_pushinteger(L, 1);
  lua_pushnumber(L, 2.5);
  lua_pushstring(L, "a string of some thirty-two byte");
  lua_pushboolean(L, 1);
  lua_pushnil(L);
  lua_createtable(L, 0, 0);
  size_t before = nallocs;
  for (int i = 0; i < 100; i++) {
    lp_buf_reset(&b);
    CHECK_EQ(lp_pack_values(L, 1, 5, &b, NULL, err, sizeof err), 0);
  }
  CHECK_EQ(nallocs, before);
  CHECK_EQ(lp_pack_values(L, 1, 6, &b, NULL, err, sizeof err), 0);
  CHECK(nallocs > before);
  CHECK_EQ(lua_gettop(L), 6);
  lp_buf_free(&b);
  lua_close(L);
}

/* Not an assertion, a figure to watch: the best of five rounds, since a
 * shared machine only ever adds noise. */
static void test_timing(lua_State *L) {
  enum { N = 200000 };
  char err[128];
  int top = lua_gettop(L), nv;
  double best = 1e9;
  lp_buf b;
  lp_buf_init(&b);
  run(L, "return 12345, -678, string.rep('s', 32)");
  for (int round = 0; round < 5; round++) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < N; i++) {
      lp_buf_reset(&b);
      if (lp_pack_values(L, top + 1, 3, &b, NULL, err, sizeof err) ||
          lp_unpack_values(L, b.data, b.len, NULL, &nv, err, sizeof err))
        break;
      lua_settop(L, top + 3);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / N;
    best = ns < best ? ns : best;
  }
  printf("pack+unpack of (int, int, 32-byte string), %zu bytes: %.1f ns\n", b.len, best);
  /* Small ints fit the inline buffer: the common spawn never mallocs. */
  lua_settop(L, top);
  run(L, "return 7, 42, string.rep('s', 32)");
  lp_buf_free(&b);
  CHECK_EQ(lp_pack_values(L, top + 1, 3, &b, NULL, err, sizeof err), 0);
  CHECK(b.data == b.inline_ && b.len == 40);
  lua_settop(L, top);
  lp_buf_free(&b);
}

/* lp_pack_scalar_text writes what Lua's tostring writes. */
static void test_scalar_text(lua_State *L) {
  CHECK_EQ(luaL_dostring(L,
                         "return 1, -7, 3.0, 2.5, 1e100, 1/0, 0.1, 2^53, -0.0, "
                         "math.mininteger, true, false, nil"),
           LUA_OK);
  int n = lua_gettop(L);
  for (int i = 1; i <= n; i++) {
    lp_buf b;
    lp_buf_init(&b);
    CHECK_EQ(lp_pack_values(L, i, 1, &b, NULL, NULL, 0), 0);
    char text[64];
    int len = lp_pack_scalar_text(b.data, b.len, text, sizeof text);
    CHECK(len > 0);
    CHECK_STR(text, luaL_tolstring(L, i, NULL));
    lua_pop(L, 1);
    lp_buf_free(&b);
  }
  lua_settop(L, 0);
  lp_buf b;
  lp_buf_init(&b);
  lua_pushstring(L, "not a scalar");
  CHECK_EQ(lp_pack_values(L, 1, 1, &b, NULL, NULL, 0), 0);
  char text[64];
  CHECK_EQ(lp_pack_scalar_text(b.data, b.len, text, sizeof text), 0);
  lua_settop(L, 0);
  lp_buf_free(&b);
}

int main(void) {
  lua_State *L = newstate();
  L2 = newstate();
  test_buf();
  test_no_alloc();
  test_scalars(L);
  test_tables(L);
  test_refusals(L);
  test_functions(L);
  test_builders(L);
  test_single_string(L);
  test_scalar_text(L);
  test_malformed(L);
  /* The round trips again with the collector running all the time. */
  run(L, "collectgarbage('incremental', 1, 1000)");
  run(L2, "collectgarbage('incremental', 1, 1000)");
  test_scalars(L);
  test_tables(L);
  run(L, "collectgarbage('incremental', 200, 100)");
  run(L2, "collectgarbage('incremental', 200, 100)");
  test_robust(L);
  lua_gc(L, LUA_GCCOLLECT);
  test_timing(L);
  CHECK_EQ(lua_gettop(L), 0);
  lua_close(L);
  lua_close(L2);
  return check_report("test_pack");
}
