/*
 * fuzz_main.c - runs a libFuzzer harness once over files and directories of
 * inputs (its seed corpus, or crash files), without libFuzzer: the corpora
 * replay as ordinary tests in every build, sanitized ones included.
 *   fuzz_pack_replay engine/test/corpus/pack [more dirs or files]
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Runs the harness on one file; returns 0, or -1 if it cannot be read. */
static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  size_t cap = 4096, len = 0, n;
  uint8_t *buf = malloc(cap);
  while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
    len += n;
    if (len == cap) {
      uint8_t *nb = realloc(buf, cap *= 2);
      if (!nb) free(buf);
      buf = nb;
    }
  }
  int bad = ferror(f) || !buf;
  fclose(f);
  /* As libFuzzer does: the input in a block of exactly its size, so that a
   * read past its end shows under ASan. */
  uint8_t *exact = bad ? NULL : malloc(len ? len : 1);
  if (exact) {
    memcpy(exact, buf, len);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
  }
  free(buf);
  return bad || !exact ? -1 : 0;
}

int main(int argc, char **argv) {
  int files = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0) {
      fprintf(stderr, "%s: cannot stat %s\n", argv[0], argv[i]);
      return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
      if (run_file(argv[i]) != 0) return 1;
      files++;
      continue;
    }
    DIR *d = opendir(argv[i]);
    if (!d) return 1;
    struct dirent *e;
    while ((e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
      if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
      if (run_file(path) != 0) {
        fprintf(stderr, "%s: cannot read %s\n", argv[0], path);
        closedir(d);
        return 1;
      }
      files++;
    }
    closedir(d);
  }
  printf("%s: %d inputs, no failure\n", argv[0], files);
  return files > 0 ? 0 : 1;
}
