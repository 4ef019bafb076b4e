/*
 * progress.c - what the luapool command shows on stderr about a run: the
 * live progress bar (--progress) and the closing summary (--stats).
 *
 * Part of the command, not of the engine: it uses only luapool.h. The bar
 * is drawn by the host thread from the engine's on_progress callback, on
 * one line that is rewritten in place ("\r" and erase-to-end), and only
 * when stderr is a terminal; stdout is never touched.
 */
#include "progress.h"

#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int columns(void) {
  struct winsize ws;
  if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20) return ws.ws_col;
  return 80;
}

/* n with a k/M suffix, in at most 6 characters. */
static void human(char *buf, size_t size, double n) {
  if (n < 1000)
    snprintf(buf, size, n < 10 && n != (long)n ? "%.1f" : "%.0f", n);
  else if (n < 1e6)
    snprintf(buf, size, "%.1fk", n / 1e3);
  else
    snprintf(buf, size, "%.1fM", n / 1e6);
}

int lp_progress_wanted(int requested) { return requested && isatty(STDERR_FILENO); }

/* Appends field i to text at *len, right-aligned in the widest it has
 * been this run (at least min): the line keeps its length as numbers grow,
 * so the bar and the fields after it do not shift from draw to draw. */
static void field(lp_progress *p, int i, int min, char *text, size_t size, int *len,
                  const char *fmt, const char *value) {
  int w = (int)strlen(value);
  if (w < min) w = min;
  if (w > p->width[i]) p->width[i] = w;
  if (*len < 0 || (size_t)*len >= size) return;
  int n = snprintf(text + *len, size - (size_t)*len, fmt, p->width[i], value);
  if (n > 0) *len += n;
}

void lp_progress_draw(lp_progress *p, const luapool_stats *st) {
  char rate[16], tasks[48], running[24], waiting[24], failed[24], elapsed[24], text[200];
  human(rate, sizeof rate, st->wall > 0 ? (double)st->tasks_done / st->wall : 0);
  snprintf(tasks, sizeof tasks, "%llu/%llu", (unsigned long long)st->tasks_done,
           (unsigned long long)st->tasks_known);
  snprintf(running, sizeof running, "%ld", st->running);
  snprintf(waiting, sizeof waiting, "%ld", st->suspended);
  snprintf(failed, sizeof failed, "%llu", (unsigned long long)st->tasks_failed);
  int secs = (int)st->wall;
  snprintf(elapsed, sizeof elapsed, "%d:%02d.%d", secs / 60, secs % 60,
           (int)((st->wall - secs) * 10));
  int n = 0;
  field(p, 0, 9, text, sizeof text, &n, " %*s tasks", tasks);
  field(p, 1, 2, text, sizeof text, &n, ", %*s running", running);
  field(p, 2, 3, text, sizeof text, &n, ", %*s waiting", waiting);
  field(p, 3, 2, text, sizeof text, &n, ", %*s failed", failed);
  field(p, 4, 5, text, sizeof text, &n, ", %*s/s", rate);
  field(p, 5, 6, text, sizeof text, &n, ", %*s", elapsed);
  int width = columns() - n - 3;
  if (width > 40) width = 40;
  char bar[48];
  int fill = 0;
  if (width < 5) {
    width = 0;
  } else if (st->tasks_known > 0) {
    fill = (int)((double)width * (double)st->tasks_done / (double)st->tasks_known);
  }
  for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
  bar[width] = '\0';
  if (width)
    fprintf(stderr, "\r[%s]%s\033[K", bar, text);
  else
    fprintf(stderr, "\r%s\033[K", text + 1);
  fflush(stderr);
  p->shown = 1;
}

void lp_progress_clear(lp_progress *p) {
  if (!p->shown) return;
  fputs("\r\033[K", stderr);
  fflush(stderr);
  p->shown = 0;
}

/* A duration with the precision a person wants: seconds from 1 s up,
 * milliseconds and microseconds below (a short run is not "0.000 s"). */
static void duration(char *buf, size_t size, double s) {
  if (s >= 1)
    snprintf(buf, size, "%.3f s", s);
  else if (s >= 1e-3)
    snprintf(buf, size, "%.1f ms", s * 1e3);
  else
    snprintf(buf, size, "%.0f \u00b5s", s * 1e6);
}

void lp_progress_summary(luapool *lp, FILE *out) {
  /* The workers first, then the run: each busy time is then measured up to
   * an instant no later than the wall time it is divided by, so no share
   * passes 100% (taken the other way round, a short run's workers showed
   * up to 280%: their clock ran on while the first lines were printed). */
  luapool_worker_stats ws[64];
  int n = luapool_get_worker_stats(lp, ws, 64);
  luapool_stats st;
  luapool_get_stats(lp, &st);
  char wall[32], cpu[32];
  duration(wall, sizeof wall, st.wall);
  duration(cpu, sizeof cpu, st.cpu);
  fprintf(out, "luapool stats\n");
  fprintf(out, "  tasks run         %llu (failed %llu, retried %llu)\n",
          (unsigned long long)st.tasks_run, (unsigned long long)st.tasks_failed,
          (unsigned long long)st.tasks_retried);
  fprintf(out, "  deepest level     %d\n", st.max_depth);
  fprintf(out, "  peak queued       %ld\n", st.peak_queued);
  fprintf(out, "  peak suspended    %ld\n", st.peak_suspended);
  fprintf(out, "  records           %llu (spilled to disk %llu, peak held %.1f MB)\n",
          (unsigned long long)st.records, (unsigned long long)st.records_spilled,
          (double)st.held_peak / (1024.0 * 1024.0));
  fprintf(out, "  wall time         %s\n", wall);
  fprintf(out, "  CPU time          %s\n", cpu);
  fprintf(out, "  tasks per second  %.1f\n", st.wall > 0 ? (double)st.tasks_run / st.wall : 0.0);
  fprintf(out, "  worker busy      ");
  for (int i = 0; i < n && i < 64; i++) {
    if (i > 0 && i % 8 == 0) fprintf(out, "\n                   ");
    char name[32];
    if (ws[i].process)
      snprintf(name, sizeof name, "p%d.%d", ws[i].process, ws[i].thread);
    else
      snprintf(name, sizeof name, "%d", ws[i].thread);
    fprintf(out, " %s:%3.0f%%", name, st.wall > 0 ? 100.0 * ws[i].busy / st.wall : 0.0);
  }
  if (n > 64) fprintf(out, " (and %d more)", n - 64);
  fprintf(out, "\n");
  fflush(out);
}
