/*
 * check_dump.c - reads a compiled script for `luapool check`.
 *
 * The script is compiled (never run) in a plain Lua state and written out
 * by lua_dump with its debug information; this file turns those bytes into
 * a tree of function prototypes (check.h): the code, the string constants,
 * upvalue and local names and a line per instruction. The layout is Lua
 * 5.4's dump format 0 (ldump.c); the header is checked and any other layout
 * is refused, never misread. Every count is checked against the bytes left
 * before anything is allocated for it.
 */
#include "check.h"

#include <stdlib.h>
#include <string.h>

typedef struct reader {
  const unsigned char *p, *end;
  int bad;
} reader;

static unsigned byte(reader *r) {
  if (!r->p || r->p >= r->end) {
    r->bad = 1;
    return 0;
  }
  return *r->p++;
}

/* ldump.c's dumpSize: 7 bits a byte, most significant first, the last byte
 * marked by its high bit. */
static size_t size(reader *r) {
  size_t x = 0;
  unsigned b;
  do {
    b = byte(r);
    x = (x << 7) | (b & 0x7f);
  } while (!(b & 0x80) && !r->bad);
  return x;
}

static const unsigned char *skip(reader *r, size_t n) {
  if (r->bad || (size_t)(r->end - r->p) < n) {
    r->bad = 1;
    r->p = r->end;
    return NULL;
  }
  const unsigned char *at = r->p;
  r->p += n;
  return at;
}

/* A count of entries of at least `each` bytes: refused if the bytes left
 * cannot hold them, so a corrupt count never becomes a huge allocation. */
static int count(reader *r, size_t each) {
  size_t n = size(r);
  if (r->bad || n > (size_t)(r->end - r->p) / each || n > 0x7fffffff) {
    r->bad = 1;
    return 0;
  }
  return (int)n;
}

static lp_str string(reader *r) {
  size_t n = size(r);
  lp_str s = {NULL, 0};
  if (n == 0) return s;
  s.s = (const char *)skip(r, n - 1);
  s.len = s.s ? n - 1 : 0;
  return s;
}

/* Constant tags (lobject.h). */
enum { VNIL = 0, VFALSE = 1, VTRUE = 17, VNUMINT = 3, VNUMFLT = 19, VSHRSTR = 4, VLNGSTR = 20 };

static void *array(reader *r, int n, size_t each) {
  void *p = calloc(n ? (size_t)n : 1, each);
  if (!p) r->bad = 1;
  return p;
}

/* One prototype and, recursively, those nested in it (ldump.c dumpFunction). */
static void function(reader *r, lp_proto *f) {
  string(r); /* source */
  int linedefined = (int)size(r);
  size(r);    /* lastlinedefined */
  skip(r, 3); /* numparams, is_vararg, maxstacksize */
  f->ncode = count(r, 4);
  const unsigned char *code = skip(r, (size_t)f->ncode * 4);
  if (r->bad || !(f->code = array(r, f->ncode, sizeof *f->code))) return;
  memcpy(f->code, code, (size_t)f->ncode * 4);
  f->nk = count(r, 1);
  if (r->bad || !(f->k = array(r, f->nk, sizeof *f->k))) return;
  for (int i = 0; i < f->nk && !r->bad; i++) {
    unsigned tag = byte(r);
    if (tag == VNUMINT || tag == VNUMFLT)
      skip(r, 8);
    else if (tag == VSHRSTR || tag == VLNGSTR)
      f->k[i] = string(r);
    else if (tag != VNIL && tag != VFALSE && tag != VTRUE)
      r->bad = 1;
  }
  int nup = count(r, 3);
  skip(r, (size_t)nup * 3); /* instack, idx, kind */
  f->np = count(r, 1);
  if (r->bad || !(f->p = array(r, f->np, sizeof *f->p))) return;
  for (int i = 0; i < f->np && !r->bad; i++) function(r, &f->p[i]);
  int nline = count(r, 1);
  const unsigned char *lineinfo = skip(r, (size_t)nline);
  int nabs = count(r, 2);
  int *abspc = array(r, nabs, sizeof(int)), *absline = array(r, nabs, sizeof(int));
  for (int i = 0; i < nabs && !r->bad; i++) {
    abspc[i] = (int)size(r);
    absline[i] = (int)size(r);
  }
  f->line = array(r, f->ncode, sizeof *f->line);
  /* The line of each pc, as luaG_getfuncline finds it: from the last
   * absolute entry at or before it, add the per-instruction deltas. */
  for (int pc = 0, a = 0, line = linedefined; pc < f->ncode && !r->bad; pc++) {
    while (a < nabs && abspc[a] < pc) a++;
    if (a < nabs && abspc[a] == pc)
      line = absline[a++];
    else if (pc < nline)
      line += (signed char)lineinfo[pc];
    f->line[pc] = line;
  }
  free(abspc);
  free(absline);
  f->nloc = count(r, 3);
  if (r->bad || !(f->loc = array(r, f->nloc, sizeof *f->loc))) return;
  for (int i = 0; i < f->nloc && !r->bad; i++) {
    f->loc[i].name = string(r);
    f->loc[i].startpc = (int)size(r);
    f->loc[i].endpc = (int)size(r);
  }
  f->nup = count(r, 1);
  if (r->bad || !(f->upname = array(r, f->nup, sizeof *f->upname))) return;
  for (int i = 0; i < f->nup && !r->bad; i++) f->upname[i] = string(r);
}

void lp_dump_free(lp_proto *f) {
  if (!f) return;
  for (int i = 0; f->p && i < f->np; i++) lp_dump_free(&f->p[i]);
  free(f->code);
  free(f->line);
  free(f->k);
  free(f->upname);
  free(f->loc);
  free(f->p);
  memset(f, 0, sizeof *f);
}

int lp_dump_read(const char *bytes, size_t len, lp_proto *main) {
  memset(main, 0, sizeof *main);
  /* Signature, version 5.4, format 0, LUAC_DATA, sizes of Instruction,
   * lua_Integer and lua_Number (4, 8, 8), the test integer and float, and
   * the main function's upvalue count. */
  static const unsigned char head[] = {0x1b, 'L',  'u',  'a',  0x54, 0, 0x19, 0x93,
                                       '\r', '\n', 0x1a, '\n', 4,    8, 8};
  if (!bytes || len <= sizeof head + 17 || memcmp(bytes, head, sizeof head) != 0) return -1;
  int64_t i;
  double n;
  memcpy(&i, bytes + sizeof head, 8);
  memcpy(&n, bytes + sizeof head + 8, 8);
  if (i != 0x5678 || n != 370.5) return -1;
  reader r = {(const unsigned char *)bytes + sizeof head + 17, (const unsigned char *)bytes + len,
              0};
  function(&r, main);
  if (r.bad) {
    lp_dump_free(main);
    return -1;
  }
  return 0;
}
