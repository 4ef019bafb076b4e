/*
 * check.h - `luapool check` and what it reads of a compiled script.
 *
 * check_dump.c turns the bytes lua_dump writes (Lua 5.4, format 0, with
 * debug information) into a tree of function prototypes; check.c walks the
 * tree and applies the rules; hint.c finds the name a misspelt one meant.
 * Strings point into the dump, which must outlive the tree.
 */
#ifndef LP_CHECK_H
#define LP_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <lua.h>

/* luapool check: what the script's bytecode shows it gets wrong (globals
 * read and never defined or assigned inside functions, unknown fields of
 * the luapool module and the standard libraries, unknown task names).
 * Prints one warning per finding to `out` and returns how many, or -1 if
 * the script cannot be analysed (its error is then the engine's to report). */
int lp_check_script(const char *path, FILE *out);

typedef struct lp_str {
  const char *s; /* NULL: not a string */
  size_t len;
} lp_str;

typedef struct lp_local {
  lp_str name;
  int startpc, endpc; /* live for startpc <= pc < endpc */
} lp_local;

typedef struct lp_proto {
  int ncode;
  uint32_t *code;
  int *line; /* the source line of each instruction */
  int nk;
  lp_str *k; /* the constants; only strings are kept */
  int nup;
  lp_str *upname; /* upvalue names */
  int nloc;
  lp_local *loc; /* in the order Lua declares them */
  int np;
  struct lp_proto *p; /* nested functions */
} lp_proto;

/* Reads the dump of a main chunk into *main. Returns 0, or -1 if the bytes
 * are not in the expected layout (never misread) or memory ran out; the
 * tree is then freed. */
int lp_dump_read(const char *bytes, size_t len, lp_proto *main);
void lp_dump_free(lp_proto *p);

/* Pushes " (did you mean 'x<rest>'?)" for the key x of tables t1/t2 (stack
 * slots; 0: none) closest to name, or "" when none is close (hint.c). */
void lp_hint_push(lua_State *L, lp_str name, int t1, int t2, const char *rest);

/* Lua 5.4's opcodes (lopcodes.h), the ones the rules look at. */
enum {
  LP_OP_MOVE = 0,
  LP_OP_LOADK = 3,
  LP_OP_GETUPVAL = 9,
  LP_OP_SETUPVAL = 10,
  LP_OP_GETTABUP = 11,
  LP_OP_GETTABLE = 12,
  LP_OP_GETI = 13,
  LP_OP_GETFIELD = 14,
  LP_OP_SETTABUP = 15,
  LP_OP_SETTABLE = 16,
  LP_OP_SETI = 17,
  LP_OP_SETFIELD = 18,
  LP_OP_NEWTABLE = 19,
  LP_OP_MMBIN = 46,
  LP_OP_MMBINK = 48,
  LP_OP_NOT = 51,
  LP_OP_CLOSE = 54,
  LP_OP_TBC = 55,
  LP_OP_JMP = 56,
  LP_OP_EQ = 57,
  LP_OP_TEST = 66,
  LP_OP_TESTSET = 67,
  LP_OP_CALL = 68,
  LP_OP_TAILCALL = 69,
  LP_OP_RETURN = 70,
  LP_OP_RETURN1 = 72,
  LP_OP_FORLOOP = 73,
  LP_OP_FORPREP = 74,
  LP_OP_TFORPREP = 75,
  LP_OP_TFORLOOP = 77,
  LP_OP_SETLIST = 78,
  LP_OP_CLOSURE = 79,
  LP_OP_VARARGPREP = 81,
  LP_OP_EXTRAARG = 82,
};

#endif
