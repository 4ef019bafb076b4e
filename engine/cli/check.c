/*
 * check.c - `luapool check`: mistakes in a script that would otherwise
 * surface only when a task reaches the line, on some worker, mid-run.
 *
 * The script is compiled (not run) in a plain Lua state with the standard
 * libraries and the task-side luapool module, and its bytecode, read by
 * check_dump.c, is walked. The rules:
 *   - a global read that no code of the script assigns and that the
 *     standard libraries do not provide (GETTABUP on _ENV);
 *   - a global assigned inside a function (SETTABUP on _ENV below the main
 *     chunk's top level): a task's global stays in its worker's state;
 *   - a field of the luapool module that the module does not have;
 *   - a literal task name given to spawn/map/starmap/imap/imap_unordered
 *     whose first component the script never assigns as a global;
 *   - a field of a standard library table that the table does not have.
 * The names the module and the libraries have are read from the tables in
 * that state, so the lists cannot drift from what a worker sees.
 *
 * Why bytecode rather than running the top level with a recording _ENV:
 * it sees the bodies of task functions too, and it runs no code of the
 * script. To know what a register holds (the module, one of its fields, a
 * library, a string constant, a new table), each function's code is
 * interpreted along its straight lines: what is known is forgotten at
 * every jump target, and locals and upvalues are also known by name (a
 * local or upvalue bound to `require "luapool"`, even under another name,
 * is the module wherever that name is seen). A value the walk cannot
 * follow is simply not checked: the rules prefer silence to a false
 * warning. Its limit: a global made dynamically (`_G[name] = v`, rawset)
 * is not seen as defined.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "check.h"
#include "lib.h"
#include "vm.h"

/* The check's tables, at fixed stack slots of the protected call. */
enum {
  T_G = 1,  /* the standard globals */
  T_MOD,    /* the luapool module */
  T_READS,  /* global name -> line of its first read */
  T_WRITES, /* global name -> line of its first assignment */
  T_TASKW,  /* global name -> first line assigned inside a function */
  T_ALIAS,  /* names (local, upvalue, global) that hold the module */
  T_FALIAS, /* local or upvalue name -> the module field it holds */
  T_MODW,   /* module fields the script assigns */
  T_STDW,   /* "lib.field" the script assigns */
  T_DONE,   /* warnings already given (one per name) */
  T_WARN,   /* warning texts, in the order found */
  T_LINE,   /* their lines */
  T_COUNT = T_LINE
};

/* What a register is known to hold. */
enum { UNKNOWN, KSTR, TABLE, CLOSURE, REQUIRE, MODULE, MODFIELD, STDLIB };

typedef struct val {
  int kind;
  lp_str s; /* KSTR: the string; MODFIELD: the field; STDLIB: the library */
} val;

typedef struct check {
  lua_State *L;
  const char *path;
  int pass; /* 0: aliases and globals; 1: fields the script assigns; 2: rules */
  val reg[256];
} check;

static void pushs(lua_State *L, lp_str s) { lua_pushlstring(L, s.s, s.len); }

static int str_is(lp_str s, const char *z) {
  return s.s && s.len == strlen(z) && !memcmp(s.s, z, s.len);
}

/* The value of t[s] (nil if s is not a string), left on the stack. */
static int get(lua_State *L, int t, lp_str s) {
  if (!s.s) {
    lua_pushnil(L);
    return LUA_TNIL;
  }
  pushs(L, s);
  return lua_rawget(L, t);
}

static int has(lua_State *L, int t, lp_str s) {
  int type = get(L, t, s);
  lua_pop(L, 1);
  return type != LUA_TNIL;
}

/* t[s] = line unless t[s] is set already. */
static void mark(lua_State *L, int t, lp_str s, int line) {
  if (!s.s || has(L, t, s)) return;
  pushs(L, s);
  lua_pushinteger(L, line);
  lua_rawset(L, t);
}

/* Adds a warning unless the same key has had one; the text is a format for
 * lua_pushfstring. */
static void warn(check *c, int line, const char *key, const char *fmt, ...) {
  lua_State *L = c->L;
  if (lua_getfield(L, T_DONE, key) != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_pushboolean(L, 1);
  lua_setfield(L, T_DONE, key);
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_Integer n = (lua_Integer)lua_rawlen(L, T_WARN) + 1;
  lua_rawseti(L, T_WARN, n);
  lua_pushinteger(L, line);
  lua_rawseti(L, T_LINE, n);
}

/* The name of the local in register r at pc, as luaF_getlocalname finds it. */
static lp_str local_at(const lp_proto *f, int r, int pc) {
  int n = -1;
  for (int i = 0; i < f->nloc && f->loc[i].startpc <= pc; i++)
    if (pc < f->loc[i].endpc && ++n == r) return f->loc[i].name;
  return (lp_str){NULL, 0};
}

/* What a name (of a local or an upvalue) is known to hold. */
static val named(check *c, lp_str name) {
  val v = {UNKNOWN, {NULL, 0}};
  if (!name.s) return v;
  if (has(c->L, T_ALIAS, name)) {
    v.kind = MODULE;
    return v;
  }
  if (get(c->L, T_FALIAS, name) == LUA_TSTRING) {
    v.kind = MODFIELD;
    v.s.s = lua_tolstring(c->L, -1, &v.s.len); /* T_FALIAS keeps it alive */
  }
  lua_pop(c->L, 1);
  return v;
}

static val value(check *c, const lp_proto *f, int r, int pc) {
  val v = named(c, local_at(f, r, pc));
  return v.kind != UNKNOWN ? v : c->reg[r];
}

/* After an instruction at pc put the module (or one of its fields) in
 * register r: a local declared there takes its name along. */
static void bind(check *c, const lp_proto *f, int r, int pc) {
  lp_str name = local_at(f, r, pc + 1);
  if (c->pass != 0 || !name.s || local_at(f, r, pc).s) return;
  lua_State *L = c->L;
  if (c->reg[r].kind == MODULE) {
    mark(L, T_ALIAS, name, 0);
  } else if (c->reg[r].kind == MODFIELD && !has(L, T_FALIAS, name)) {
    pushs(L, name);
    pushs(L, c->reg[r].s);
    lua_rawset(L, T_FALIAS);
  }
}

/* A read of field `key` of the module; `tested`: only to see whether it is
 * there (`luapool.x or y`, `if luapool.x then`), which is never reported. */
static void module_field(check *c, lp_str key, int line, int tested) {
  lua_State *L = c->L;
  if (c->pass != 2 || tested || !key.s || has(L, T_MOD, key) || has(L, T_MODW, key)) return;
  pushs(L, key);
  const char *k = lua_tostring(L, -1);
  lp_hint_push(L, key, T_MOD, T_MODW, "");
  lua_pushfstring(L, "luapool.%s", k);
  warn(c, line, lua_tostring(L, -1), "%s:%d: warning: luapool has no field '%s'%s", c->path, line,
       k, lua_tostring(L, -2));
  lua_pop(L, 3);
}

/* A read of field `key` of the standard library `lib` (`tested`: as above;
 * `package.loaders or package.searchers` is a common idiom). */
static void library_field(check *c, lp_str lib, lp_str key, int line, int tested) {
  lua_State *L = c->L;
  if (c->pass != 2 || tested || !key.s) return;
  int top = lua_gettop(L);
  int t = top + 1;
  get(L, T_G, lib);
  pushs(L, lib);
  pushs(L, key);
  lua_pushfstring(L, "%s.%s", lua_tostring(L, t + 1), lua_tostring(L, t + 2));
  int known = !lua_istable(L, t) || has(L, t, key) ||
              has(L, T_STDW, (lp_str){lua_tostring(L, -1), lua_rawlen(L, -1)});
  if (!known) {
    lp_hint_push(L, key, t, 0, "");
    warn(c, line, lua_tostring(L, t + 3), "%s:%d: warning: %s has no field '%s'%s", c->path, line,
         lua_tostring(L, t + 1), lua_tostring(L, t + 2), lua_tostring(L, -1));
  }
  lua_settop(L, top);
}

/* A string given as a task name. */
static void task_name(check *c, lp_str name, int line) {
  lua_State *L = c->L;
  if (c->pass != 2) return;
  if (name.len > 8 && memcmp(name.s, "luapool.", 8) == 0) {
    module_field(c, (lp_str){name.s + 8, name.len - 8}, line, 0);
    return;
  }
  const char *dot = memchr(name.s, '.', name.len);
  lp_str first = {name.s, dot ? (size_t)(dot - name.s) : name.len};
  if (has(L, T_WRITES, first) || has(L, T_G, first)) return;
  pushs(L, name);
  pushs(L, first);
  lp_hint_push(L, first, T_WRITES, 0, lua_tostring(L, -2) + first.len);
  lua_pushfstring(L, "task %s", lua_tostring(L, -3));
  if (dot)
    warn(c, line, lua_tostring(L, -1),
         "%s:%d: warning: task '%s': the script defines no global '%s'%s", c->path, line,
         lua_tostring(L, -4), lua_tostring(L, -3), lua_tostring(L, -2));
  else
    warn(c, line, lua_tostring(L, -1),
         "%s:%d: warning: task '%s' is not a global function of the script%s", c->path, line,
         lua_tostring(L, -4), lua_tostring(L, -2));
  lua_pop(L, 4);
}

static int spawns_by_name(lp_str f) {
  static const char *const fns[] = {"spawn", "map", "starmap", "imap", "imap_unordered"};
  for (size_t i = 0; i < sizeof fns / sizeof *fns; i++)
    if (str_is(f, fns[i])) return 1;
  return 0;
}

/* A call of the function in register a with nargs arguments (-1: up to the
 * top): task names, and `require "luapool"`. */
static void call(check *c, const lp_proto *f, int a, int nargs, int pc) {
  val fn = value(c, f, a, pc);
  val arg1 = nargs != 0 && a + 1 < 256 ? value(c, f, a + 1, pc) : (val){UNKNOWN, {NULL, 0}};
  if (fn.kind == MODFIELD && spawns_by_name(fn.s)) {
    if (arg1.kind == KSTR) {
      task_name(c, arg1.s, f->line[pc]);
    } else if (arg1.kind == TABLE && str_is(fn.s, "spawn") && (nargs < 0 || nargs >= 2) &&
               a + 2 < 256) {
      val arg2 = value(c, f, a + 2, pc);
      if (arg2.kind == KSTR) task_name(c, arg2.s, f->line[pc]);
    }
  }
  int module = fn.kind == REQUIRE && nargs == 1 && arg1.kind == KSTR && str_is(arg1.s, "luapool");
  for (int r = a; r < 256; r++) c->reg[r].kind = UNKNOWN;
  if (module) {
    c->reg[a].kind = MODULE;
    bind(c, f, a, pc);
  }
}

/* What reading global `key` gives. */
static val global(check *c, lp_str key) {
  lua_State *L = c->L;
  val v = {UNKNOWN, key};
  if (!key.s) return v;
  if (has(L, T_ALIAS, key)) {
    v.kind = MODULE;
  } else if (has(L, T_WRITES, key) || str_is(key, "_G")) {
    /* the script's own, or all the globals */
  } else if (str_is(key, "require")) {
    v.kind = REQUIRE;
  } else {
    if (get(L, T_G, key) == LUA_TTABLE) v.kind = STDLIB;
    lua_pop(L, 1);
  }
  return v;
}

static void assign_global(check *c, lp_str key, val v, int line, int depth) {
  lua_State *L = c->L;
  if (c->pass != 0 || !key.s) return;
  mark(L, T_WRITES, key, line);
  if (depth > 0) mark(L, T_TASKW, key, line);
  if (v.kind == MODULE) mark(L, T_ALIAS, key, line);
}

/* Instructions that write register A alone: loads, arithmetic, GETTABLE,
 * GETI, unary operators, CONCAT, TESTSET. The others that write registers
 * write A and up, or none (below). */
static int writes_a(int op) {
  return (op >= 1 && op <= 2) || (op >= 4 && op <= 7) || (op >= 12 && op <= 13) ||
         (op >= 21 && op <= 45) || (op >= 49 && op <= 53) || op == 67;
}

static int writes_none(int op) {
  return op == LP_OP_SETUPVAL || (op >= LP_OP_SETTABLE && op <= LP_OP_SETFIELD) ||
         (op >= LP_OP_MMBIN && op <= LP_OP_MMBINK) || op == LP_OP_CLOSE || op == LP_OP_TBC ||
         (op >= LP_OP_JMP && op <= LP_OP_TEST) || (op >= LP_OP_RETURN && op <= LP_OP_RETURN1) ||
         op == LP_OP_SETLIST || op == LP_OP_VARARGPREP || op == LP_OP_EXTRAARG;
}

/* Marks the instructions that a jump can reach: there what the registers
 * hold depends on the path, so it is forgotten. */
static void jump_targets(const lp_proto *f, unsigned char *target) {
  for (int pc = 0; pc < f->ncode; pc++) {
    uint32_t ins = f->code[pc];
    int op = ins & 0x7f, bx = (int)(ins >> 15), to = -1;
    if (op == LP_OP_JMP) to = pc + 1 + (int)(ins >> 7) - ((1 << 24) - 1);
    if (op == LP_OP_FORLOOP || op == LP_OP_TFORLOOP) to = pc + 1 - bx;
    if (op == LP_OP_FORPREP) to = pc + 2 + bx;
    if (op == LP_OP_TFORPREP) to = pc + 1 + bx;
    if (to >= 0 && to < f->ncode) target[to] = 1;
  }
}

/* Whether the instruction after pc only tests the value in register r:
 * TEST, TESTSET or NOT on it. */
static int tested(const lp_proto *f, int pc, int r) {
  if (pc + 1 >= f->ncode) return 0;
  uint32_t ins = f->code[pc + 1];
  int op = ins & 0x7f, a = (ins >> 7) & 0xff, b = (ins >> 16) & 0xff;
  return (op == LP_OP_TEST && a == r) || ((op == LP_OP_TESTSET || op == LP_OP_NOT) && b == r);
}

static void walk(check *c, const lp_proto *f, int depth) {
  lua_State *L = c->L;
  int env = -1;
  for (int i = 0; i < f->nup && env < 0; i++)
    if (str_is(f->upname[i], "_ENV")) env = i;
  unsigned char *target = lua_newuserdatauv(L, (size_t)f->ncode + 1, 0);
  memset(target, 0, (size_t)f->ncode + 1);
  jump_targets(f, target);
  memset(c->reg, 0, sizeof c->reg);
  for (int pc = 0; pc < f->ncode; pc++) {
    if (target[pc]) memset(c->reg, 0, sizeof c->reg);
    uint32_t ins = f->code[pc];
    int op = ins & 0x7f, a = (ins >> 7) & 0xff, k = (ins >> 15) & 1, b = (ins >> 16) & 0xff,
        cc = (ins >> 24) & 0xff, bx = (int)(ins >> 15), line = f->line[pc];
    lp_str kb = b < f->nk ? f->k[b] : (lp_str){NULL, 0};
    lp_str kc = cc < f->nk ? f->k[cc] : (lp_str){NULL, 0};
    val *ra = &c->reg[a];
    switch (op) {
      case LP_OP_MOVE: *ra = value(c, f, b, pc); break;
      case LP_OP_LOADK:
        ra->kind = UNKNOWN;
        if (bx < f->nk && f->k[bx].s) *ra = (val){KSTR, f->k[bx]};
        break;
      case LP_OP_GETUPVAL:
        *ra = b < f->nup ? named(c, f->upname[b]) : (val){UNKNOWN, {0, 0}};
        break;
      case LP_OP_GETTABUP:
        if (b == env) {
          if (c->pass == 0) mark(L, T_READS, kc, line);
          *ra = global(c, kc);
        } else if (b < f->nup && named(c, f->upname[b]).kind == MODULE) {
          module_field(c, kc, line, tested(f, pc, a));
          *ra = (val){MODFIELD, kc};
        } else {
          ra->kind = UNKNOWN;
        }
        bind(c, f, a, pc);
        break;
      case LP_OP_GETFIELD: {
        val base = value(c, f, b, pc);
        if (base.kind == MODULE) {
          module_field(c, kc, line, tested(f, pc, a));
          *ra = (val){MODFIELD, kc};
        } else {
          if (base.kind == STDLIB) library_field(c, base.s, kc, line, tested(f, pc, a));
          ra->kind = UNKNOWN;
        }
        bind(c, f, a, pc);
        break;
      }
      case LP_OP_SETTABUP:
        if (a == env) {
          assign_global(c, kb, k ? (val){UNKNOWN, {0, 0}} : value(c, f, cc, pc), line, depth);
        } else if (c->pass == 1 && a < f->nup && named(c, f->upname[a]).kind == MODULE) {
          mark(L, T_MODW, kb, line);
        }
        break;
      case LP_OP_SETFIELD: {
        val base = value(c, f, a, pc);
        if (c->pass == 1 && base.kind == MODULE) mark(L, T_MODW, kb, line);
        if (c->pass == 1 && base.kind == STDLIB && kb.s) {
          pushs(L, base.s);
          lua_pushliteral(L, ".");
          pushs(L, kb);
          lua_concat(L, 3);
          lua_pushboolean(L, 1);
          lua_rawset(L, T_STDW);
        }
        break;
      }
      case LP_OP_NEWTABLE: ra->kind = TABLE; break;
      case LP_OP_CLOSURE: ra->kind = CLOSURE; break;
      case LP_OP_CALL:
      case LP_OP_TAILCALL: call(c, f, a, b ? b - 1 : -1, pc); break;
      default:
        if (writes_a(op))
          ra->kind = UNKNOWN;
        else if (!writes_none(op))
          for (int r = a; r < 256; r++) c->reg[r].kind = UNKNOWN;
    }
  }
  lua_pop(L, 1);
  for (int i = 0; i < f->np; i++) walk(c, &f->p[i], depth + 1);
}

typedef struct order {
  lua_Integer line;
  int seq;
} order;

static int by_line(const void *x, const void *y) {
  const order *a = x, *b = y;
  if (a->line != b->line) return a->line < b->line ? -1 : 1;
  return a->seq - b->seq;
}

/* The warnings of the last pass that are about globals: reads of names
 * never defined, and assignments inside functions. */
static void global_warnings(check *c) {
  lua_State *L = c->L;
  lua_pushnil(L);
  while (lua_next(L, T_READS)) {
    lua_pushvalue(L, -2);
    int known = lua_rawget(L, T_WRITES) != LUA_TNIL;
    lua_pushvalue(L, -3);
    known = lua_rawget(L, T_G) != LUA_TNIL || known;
    lua_pop(L, 2);
    int line = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (known) continue;
    lua_pushfstring(L, "read %s", lua_tostring(L, -1));
    warn(c, line, lua_tostring(L, -1), "%s:%d: warning: global '%s' is read but never defined",
         c->path, line, lua_tostring(L, -2));
    lua_pop(L, 1);
  }
  lua_pushnil(L);
  while (lua_next(L, T_TASKW)) {
    int line = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_pushfstring(L, "set %s", lua_tostring(L, -1));
    warn(c, line, lua_tostring(L, -1),
         "%s:%d: warning: global '%s' is assigned inside a function: it stays in the Lua state "
         "of the worker that ran it (see \"What tasks share\" in the README)",
         c->path, line, lua_tostring(L, -2));
    lua_pop(L, 1);
  }
}

/* Protected: 1 the dump, 2 the tree, 3 the path, 4 the output. Returns the
 * number of warnings printed. */
static int analyse(lua_State *L) {
  const lp_proto *main = lua_touserdata(L, 2);
  const char *path = lua_touserdata(L, 3);
  FILE *out = lua_touserdata(L, 4);
  lua_settop(L, 0);
  lua_pushglobaltable(L);
  lp_lib_module(L);
  while (lua_gettop(L) < T_COUNT) lua_newtable(L);
  check *c = lua_newuserdatauv(L, sizeof *c, 0);
  c->L = L;
  c->path = path;
  for (c->pass = 0; c->pass < 3; c->pass++) walk(c, main, 0);
  global_warnings(c);
  int n = (int)lua_rawlen(L, T_WARN);
  order *o = lua_newuserdatauv(L, sizeof *o * (size_t)(n ? n : 1), 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, T_LINE, i + 1);
    o[i] = (order){lua_tointeger(L, -1), i + 1};
    lua_pop(L, 1);
  }
  qsort(o, (size_t)n, sizeof *o, by_line);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, T_WARN, o[i].seq);
    fprintf(out, "%s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pushinteger(L, n);
  return 1;
}

typedef struct sink {
  char *p;
  size_t len, cap;
} sink;

static int writer(lua_State *L, const void *p, size_t sz, void *ud) {
  (void)L;
  sink *s = ud;
  if (s->len + sz > s->cap) {
    size_t cap = (s->len + sz) * 2;
    char *np = realloc(s->p, cap);
    if (!np) return 1;
    s->p = np;
    s->cap = cap;
  }
  memcpy(s->p + s->len, p, sz);
  s->len += sz;
  return 0;
}

/* Protected: leaves the dump of the script (a string) at 1. */
static int dump(lua_State *L) {
  const char *path = lua_touserdata(L, 1);
  lua_settop(L, 0);
  if (luaL_loadfilex(L, path, "t") != LUA_OK) return lua_error(L);
  sink s = {NULL, 0, 0};
  int rc = lua_dump(L, writer, &s, 0);
  if (rc == 0) lua_pushlstring(L, s.p, s.len);
  free(s.p);
  if (rc != 0) return luaL_error(L, "out of memory");
  return 1;
}

int lp_check_script(const char *path, FILE *out) {
  lua_State *L = luaL_newstate();
  if (!L) return -1;
  luaL_openlibs(L);
  lua_pushcfunction(L, dump);
  lua_pushlightuserdata(L, (void *)path);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_close(L);
    return -1;
  }
  size_t len;
  const char *bc = lua_tolstring(L, 1, &len);
  lp_proto main;
  int count = -1;
  if (lp_dump_read(bc, len, &main) == 0) {
    lua_pushcfunction(L, analyse);
    lua_pushvalue(L, 1);
    lua_pushlightuserdata(L, &main);
    lua_pushlightuserdata(L, (void *)path);
    lua_pushlightuserdata(L, out);
    if (lua_pcall(L, 4, 1, 0) == LUA_OK) count = (int)lua_tointeger(L, -1);
    lp_dump_free(&main);
  }
  if (count < 0) {
    fprintf(out, "%s: the script could not be checked (unexpected bytecode)\n", path);
    count = 0;
  }
  lua_close(L);
  return count;
}
