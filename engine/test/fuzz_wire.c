/*
 * fuzz_wire.c - libFuzzer harness for the message framing between the
 * engine and its worker processes (wire.c): the bytes read from a worker's
 * pipe come from a process that may have crashed half-way through a write,
 * or worse, and must never crash the engine.
 *
 * The input is read as a stream of frames, as the engine's reader does. For
 * each frame: lp_wire_frame stays inside the bytes it is given (every
 * shorter prefix is tried in a buffer of exactly its size, so that a read
 * past the end shows under ASan) and never finds a frame in a prefix; the
 * fields of the frame's type, read with the get_* calls, stay inside the
 * frame; a frame that holds exactly its type's fields is re-encoded with the
 * put calls into the very same bytes; packed values inside are validated as
 * the receiver would. Built by cmake -DLUAPOOL_FUZZ=ON (clang):
 *   build-fuzz/fuzz_wire -max_total_time=600 CORPUS engine/test/corpus/wire
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pack.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The fields of each message type, as wire.h defines them: u64, f64,
 * bytes, and (p) bytes that hold a packed value. */
static const char *const fields[LP_MSG_MAX] = {
    [LP_MSG_INIT] = "uuuuufbbbuu", [LP_MSG_EXEC] = "ubuffp",
    [LP_MSG_CANCEL] = "u",         [LP_MSG_STOP] = "",
    [LP_MSG_READY] = "u",          [LP_MSG_LOADERR] = "b",
    [LP_MSG_WANT] = "u",           [LP_MSG_STARTED] = "u",
    [LP_MSG_RESULT] = "uuupb",     [LP_MSG_RECORD] = "uuubfb",
    [LP_MSG_DONE] = "u",           [LP_MSG_FAILURE] = "b",
    [LP_MSG_COUNTER] = "ubuu",     [LP_MSG_REPLY] = "uu",
    [LP_MSG_TRACE] = "uuuuuuub",   [LP_MSG_HUNGRY] = "u",
    [LP_MSG_EXPORT] = "ubuffup"};
/* LP_MSG_STATS has a field list that repeats per thread: its frames are
 * only checked for staying inside themselves. */

static void fail(const char *what, size_t off) {
  fprintf(stderr, "fuzz_wire: %s (frame at byte %zu)\n", what, off);
  abort();
}

/* lp_wire_frame on a copy of exactly n bytes. */
static long frame_exact(const uint8_t *p, size_t n, lp_wire_msg *m) {
  uint8_t *copy = malloc(n ? n : 1);
  if (!copy) abort();
  memcpy(copy, p, n);
  long k = lp_wire_frame(copy, n, m);
  free(copy);
  return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t off = 0;
  while (off < size) {
    const uint8_t *p = data + off;
    size_t left = size - off;
    lp_wire_msg m;
    long k = lp_wire_frame(p, left, &m);
    /* However the bytes are cut, a prefix never holds a frame, and a
     * prefix that is already invalid stays invalid. */
    for (size_t cut = 0; cut < left && cut <= 8; cut++) {
      lp_wire_msg m2;
      long kc = frame_exact(p, cut, &m2);
      if (kc > 0 && (k <= 0 || (size_t)kc != (size_t)k)) fail("a frame found in a prefix", off);
      if (kc < 0 && k >= 0) fail("a prefix refused that the whole accepts", off);
    }
    if (k <= 0) break;
    if (k < 5 || (size_t)k > left) fail("frame size outside the input", off);
    if (frame_exact(p, (size_t)k - 1, &m) > 0) fail("a frame found one byte short", off);
    if (lp_wire_frame(p, left, &m) != k) fail("a second look differs", off);
    if (m.p != p + 5 || m.end != p + k || m.type < LP_MSG_INIT || m.type >= LP_MSG_MAX)
      fail("frame bounds or type wrong", off);

    /* The type's fields, re-encoded as they are read. */
    lp_buf out;
    lp_buf_init(&out);
    size_t mark;
    if (lp_wire_begin(&out, m.type, &mark) != 0) abort();
    /* A type this table does not describe gets the frame checks only. */
    int whole = fields[m.type] != NULL;
    for (const char *f = whole ? fields[m.type] : ""; *f && whole; f++) {
      const unsigned char *before = m.p;
      if (*f == 'u') {
        uint64_t v;
        whole = lp_wire_get_u64(&m, &v) == 0;
        if (whole && lp_wire_u64(&out, v) != 0) abort();
      } else if (*f == 'f') {
        double v;
        whole = lp_wire_get_f64(&m, &v) == 0;
        if (whole && lp_wire_f64(&out, v) != 0) abort();
      } else {
        const char *b;
        size_t n;
        whole = lp_wire_get_bytes(&m, &b, &n) == 0;
        if (whole) {
          if ((const unsigned char *)b < before || (const unsigned char *)b + n > m.end)
            fail("bytes field outside its frame", off);
          if (lp_wire_bytes(&out, b, n) != 0) abort();
          char err[128];
          if (*f == 'p') lp_pack_validate(b, n, err, sizeof err);
        }
      }
      if (!whole && m.p != before) fail("a refused field moved the reader", off);
      if (m.p > m.end) fail("the reader passed the frame's end", off);
    }
    lp_wire_end(&out, mark);
    if (whole && m.p == m.end && (out.len != (size_t)k || memcmp(out.data, p, out.len) != 0))
      fail("re-encoding a frame gave other bytes", off);
    lp_buf_free(&out);
    off += (size_t)k;
  }
  return 0;
}
