/*
 * wire.c - frames on the pipes between the engine and worker processes.
 */
#include "wire.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void put_le(unsigned char *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

int lp_wire_begin(lp_buf *b, int type, size_t *mark) {
  if (lp_buf_reserve(b, 5) != 0) return -1;
  *mark = b->len;
  unsigned char *p = (unsigned char *)b->data + b->len;
  put_le(p, 0, 4);
  p[4] = (unsigned char)type;
  b->len += 5;
  return 0;
}

int lp_wire_u64(lp_buf *b, uint64_t v) {
  if (lp_buf_reserve(b, 8) != 0) return -1;
  put_le((unsigned char *)b->data + b->len, v, 8);
  b->len += 8;
  return 0;
}

int lp_wire_f64(lp_buf *b, double v) {
  uint64_t u;
  memcpy(&u, &v, sizeof u);
  return lp_wire_u64(b, u);
}

int lp_wire_bytes(lp_buf *b, const void *p, size_t n) {
  if (n > LP_WIRE_MAXFRAME || lp_buf_reserve(b, 4 + n) != 0) return -1;
  put_le((unsigned char *)b->data + b->len, n, 4);
  if (n) memcpy(b->data + b->len + 4, p, n);
  b->len += 4 + n;
  return 0;
}

void lp_wire_end(lp_buf *b, size_t mark) {
  put_le((unsigned char *)b->data + mark, b->len - mark - 4, 4);
}

long lp_wire_frame(const void *buf, size_t len, lp_wire_msg *m) {
  const unsigned char *p = buf;
  if (len < 4) return 0;
  uint64_t n = get_le(p, 4);
  if (n < 1 || n > LP_WIRE_MAXFRAME) return -1;
  /* The type byte may not have arrived yet: a read can end anywhere. */
  if (len < 5) return 0;
  if (p[4] < LP_MSG_INIT || p[4] >= LP_MSG_MAX) return -1;
  if (len - 4 < n) return 0;
  m->type = p[4];
  m->p = p + 5;
  m->end = p + 4 + n;
  return (long)(4 + n);
}

int lp_wire_get_u64(lp_wire_msg *m, uint64_t *v) {
  if (m->end - m->p < 8) return -1;
  *v = get_le(m->p, 8);
  m->p += 8;
  return 0;
}

int lp_wire_get_f64(lp_wire_msg *m, double *v) {
  uint64_t u;
  if (lp_wire_get_u64(m, &u) != 0) return -1;
  memcpy(v, &u, sizeof *v);
  return 0;
}

int lp_wire_get_bytes(lp_wire_msg *m, const char **p, size_t *n) {
  if (m->end - m->p < 4) return -1;
  uint64_t len = get_le(m->p, 4);
  if ((uint64_t)(m->end - m->p - 4) < len) return -1;
  *p = (const char *)m->p + 4;
  *n = (size_t)len;
  m->p += 4 + len;
  return 0;
}

int lp_wire_write_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    /* MSG_NOSIGNAL: a dead worker is an EPIPE to handle, not a SIGPIPE. */
    ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == ENOTSOCK) k = write(fd, p, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

int lp_wire_put_export(lp_buf *b, uint64_t id, const lp_wire_task *t) {
  size_t mark, len = b->len;
  if (lp_wire_begin(b, LP_MSG_EXPORT, &mark) || lp_wire_u64(b, id) ||
      lp_wire_bytes(b, t->fn, t->fnlen) || lp_wire_u64(b, t->depth) ||
      lp_wire_f64(b, t->priority) || lp_wire_f64(b, t->timeout) || lp_wire_u64(b, t->retries) ||
      lp_wire_bytes(b, t->args, t->argslen)) {
    b->len = len;
    return -1;
  }
  lp_wire_end(b, mark);
  return 0;
}

int lp_wire_get_export(lp_wire_msg *m, uint64_t *id, lp_wire_task *t) {
  if (m->type != LP_MSG_EXPORT || lp_wire_get_u64(m, id) ||
      lp_wire_get_bytes(m, &t->fn, &t->fnlen) || lp_wire_get_u64(m, &t->depth) ||
      lp_wire_get_f64(m, &t->priority) || lp_wire_get_f64(m, &t->timeout) ||
      lp_wire_get_u64(m, &t->retries) || lp_wire_get_bytes(m, &t->args, &t->argslen))
    return -1;
  if (t->priority != t->priority) t->priority = 0;
  if (!(t->timeout > 0)) t->timeout = 0;
  return 0;
}

int lp_wire_put_init(lp_buf *b, const lp_wire_init *f) {
  size_t mark;
  if (lp_wire_begin(b, LP_MSG_INIT, &mark) || lp_wire_u64(b, f->slot) ||
      lp_wire_u64(b, f->threads) || lp_wire_u64(b, f->order) || lp_wire_u64(b, f->memory_limit) ||
      lp_wire_u64(b, f->id_base) || lp_wire_f64(b, f->task_timeout) ||
      lp_wire_bytes(b, f->chunkname, f->chunkname_len) ||
      lp_wire_bytes(b, f->script, f->script_len) || lp_wire_bytes(b, f->pool, f->pool_len) ||
      lp_wire_u64(b, f->trace) || lp_wire_u64(b, f->retries))
    return -1;
  lp_wire_end(b, mark);
  return 0;
}

int lp_wire_get_init(lp_wire_msg *m, lp_wire_init *f) {
  return m->type != LP_MSG_INIT || lp_wire_get_u64(m, &f->slot) ||
                 lp_wire_get_u64(m, &f->threads) || lp_wire_get_u64(m, &f->order) ||
                 lp_wire_get_u64(m, &f->memory_limit) || lp_wire_get_u64(m, &f->id_base) ||
                 lp_wire_get_f64(m, &f->task_timeout) ||
                 lp_wire_get_bytes(m, &f->chunkname, &f->chunkname_len) ||
                 lp_wire_get_bytes(m, &f->script, &f->script_len) ||
                 lp_wire_get_bytes(m, &f->pool, &f->pool_len) || lp_wire_get_u64(m, &f->trace) ||
                 lp_wire_get_u64(m, &f->retries)
             ? -1
             : 0;
}
