/* posix_reader: an unmodified-style reader for the store benchmark. Reads every
 * file named in LIST (one path relative to ROOT a line, already in random order)
 * with open/read/close (or, with METHOD mmap, open/fstat/mmap/munmap/close), EPOCHS
 * times, and prints one line per epoch. Run on plain files, or under
 * LD_PRELOAD=libhpdl_intercept.so with ROOT inside HPDL_MOUNT.
 * usage: posix_reader ROOT LIST [EPOCHS] [LABEL] [read|mmap] */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s ROOT LIST [EPOCHS] [LABEL] [read|mmap]\n", argv[0]);
    return 2;
  }
  const char* root = argv[1];
  int epochs = argc > 3 ? atoi(argv[3]) : 1;
  const char* label = argc > 4 ? argv[4] : "posix";
  const int use_mmap = argc > 5 && strcmp(argv[5], "mmap") == 0;
  if (argc > 5 && !use_mmap && strcmp(argv[5], "read") != 0) {
    fprintf(stderr, "METHOD must be read or mmap, not %s\n", argv[5]);
    return 2;
  }
  FILE* lf = fopen(argv[2], "r");
  if (!lf) {
    perror(argv[2]);
    return 2;
  }
  size_t cap = 1024, n = 0;
  char** paths = malloc(cap * sizeof *paths);
  char line[4096];
  while (fgets(line, sizeof line, lf)) {
    line[strcspn(line, "\n")] = 0;
    if (!*line) continue;
    if (n == cap) paths = realloc(paths, (cap *= 2) * sizeof *paths);
    size_t len = strlen(root) + strlen(line) + 2;
    paths[n] = malloc(len);
    snprintf(paths[n], len, "%s/%s", root, line);
    ++n;
  }
  fclose(lf);
  static char buf[1 << 20];
  for (int e = 1; e <= epochs; ++e) {
    unsigned long long bytes = 0, sum = 0;
    double t0 = now();
    for (size_t i = 0; i < n; ++i) {
      int fd = open(paths[i], O_RDONLY);
      if (fd < 0) {
        perror(paths[i]);
        return 1;
      }
      if (use_mmap) {
        struct stat st;
        if (fstat(fd, &st) != 0) {
          perror(paths[i]);
          return 1;
        }
        if (st.st_size > 0) {
          const unsigned char* p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
          if (p == MAP_FAILED) {
            perror(paths[i]);
            return 1;
          }
          bytes += (unsigned long long)st.st_size;
          for (off_t j = 0; j < st.st_size; j += 64) sum += p[j];  /* touch every cache line */
          munmap((void*)p, (size_t)st.st_size);
        }
      } else {
        ssize_t got;
        while ((got = read(fd, buf, sizeof buf)) > 0) {
          bytes += (unsigned long long)got;
          sum += (unsigned char)buf[got / 2];
        }
      }
      close(fd);
    }
    double dt = now() - t0;
    printf("mode=%s epoch=%d reads=%zu bytes=%llu sec=%.4f reads_per_s=%.0f MB_per_s=%.1f check=%llu\n", label, e, n,
           bytes, dt, n / dt, bytes / dt / 1e6, sum);
    fflush(stdout);
  }
  return 0;
}
