// How much of a model file the kernel maps with huge pages when it is
// mapped and read in as greve's load does (mmap, then MADV_POPULATE_READ):
// prints the mapping's Rss and FilePmdMapped lines from /proc/self/smaps.
// With a second argument "advise", asks for MADV_HUGEPAGE first. Drop the
// file from the page cache beforehand to see a cold load, e.g. with
// python3 -c 'import os,sys; os.posix_fadvise(os.open(sys.argv[1], os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)' FILE
//   cc -O2 benches/huge-pages.c -o huge-pages && ./huge-pages MODEL.gguf [advise]
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [advise]\n", argv[0]);
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror(argv[1]);
        return 1;
    }
    char *p = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    if (argc > 2 && strcmp(argv[2], "advise") == 0 && madvise(p, st.st_size, MADV_HUGEPAGE) != 0)
        perror("MADV_HUGEPAGE");
    if (madvise(p, st.st_size, MADV_POPULATE_READ) != 0)
        perror("MADV_POPULATE_READ");
    FILE *smaps = fopen("/proc/self/smaps", "r");
    char line[512], start[32];
    snprintf(start, sizeof start, "%lx-", (unsigned long)p);
    int ours = 0;
    while (smaps && fgets(line, sizeof line, smaps)) {
        if (strchr(line, '-') && strchr(line, ' ') && strchr(line, '-') < strchr(line, ' '))
            ours = strncmp(line, start, strlen(start)) == 0;
        if (ours && (strncmp(line, "Rss:", 4) == 0 || strncmp(line, "FilePmdMapped:", 14) == 0))
            fputs(line, stdout);
    }
    return 0;
}
