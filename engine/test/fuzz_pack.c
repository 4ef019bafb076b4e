/*
 * fuzz_pack.c - libFuzzer harness for the decoder, which reads bytes from
 * outside (pipes, later the network) and so must survive anything.
 *
 * For each input: lp_pack_validate and lp_unpack_values must agree, the stack
 * must come back as found, and an accepted message must re-pack into bytes
 * that decode to an equal value graph. Build and run (seeds in corpus/pack):
 *   clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -Iengine \
 *     -I/usr/include/lua5.4 engine/pack.c engine/test/fuzz_pack.c -llua5.4 -lm -o fuzz_pack
 *   ./fuzz_pack -max_total_time=60 /tmp/corpus engine/test/corpus/pack
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "pack.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The deep compare of test_pack.c, with a step budget: matching table keys is
 * a search, and a hostile graph must not turn it into an exponential one.
 * When the search had a choice or ran out, DEQ_AMBIGUOUS is set and a
 * mismatch proves nothing. */
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
    "end\n";

static lua_State *L;

static void fail(const char *what, const char *detail) {
  fprintf(stderr, "fuzz_pack: %s: %s\n", what, detail ? detail : "");
  abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = (const char *)data;
  char e1[256], e2[256];
  int nv = -1, nv2 = -1;
  if (!L) {
    L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_dostring(L, helpers)) fail("helpers", lua_tostring(L, -1));
  }
  int top = lua_gettop(L);
  int r1 = lp_pack_validate(p, size, e1, sizeof e1);
  int r2 = lp_unpack_values(L, p, size, NULL, &nv, e2, sizeof e2);
  if (r1 != r2) fail("validate and unpack disagree", r1 ? e1 : e2);
  if (lua_gettop(L) != top + (r2 ? 0 : nv)) fail("stack not restored", NULL);

  const char *s;
  size_t slen;
  if (lp_pack_single_string(p, size, &s, &slen)) {
    size_t len;
    const char *v = nv == 1 ? lua_tolstring(L, top + 1, &len) : NULL;
    if (r2 || lua_type(L, top + 1) != LUA_TSTRING || len != slen || memcmp(v, s, len))
      fail("single_string disagrees with unpack", NULL);
  }
  if (r2) return 0;

  /* Re-pack. The one refusal allowed: a table shared along two paths may be
   * met first along the deeper one and so exceed the nesting limit. */
  lp_buf b;
  lp_buf_init(&b);
  if (lp_pack_values(L, top + 1, nv, &b, NULL, e1, sizeof e1)) {
    if (!strstr(e1, "table nesting deeper than")) fail("re-pack refused", e1);
  } else {
    if (lp_pack_validate(b.data, b.len, e1, sizeof e1)) fail("re-packed bytes invalid", e1);
    if (lp_unpack_values(L, b.data, b.len, NULL, &nv2, e2, sizeof e2) || nv2 != nv)
      fail("re-packed bytes refused", e2);
    luaL_checkstack(L, 2 * nv + 3, NULL);
    lua_getglobal(L, "deq_values");
    lua_pushinteger(L, nv);
    for (int i = 1; i <= 2 * nv; i++) lua_pushvalue(L, top + i);
    lua_call(L, 2 * nv + 1, 1);
    int same = lua_toboolean(L, -1);
    lua_getglobal(L, "DEQ_AMBIGUOUS");
    if (!same && !lua_toboolean(L, -1)) fail("round trip changed the values", NULL);
  }
  lp_buf_free(&b);
  lua_settop(L, top);
  return 0;
}
