// How fast this machine's threads can read memory: the bound on decoding,
// which reads every weight once a token (a Q4_K_M 7B file: 4.37 GB, so at
// 32 GB/s no engine decodes faster than 7.3 tokens/s).
//
// Each of THREADS threads sums its share of a buffer far larger than the
// caches, 16 times, every other time with software prefetches; the best
// pass counts (the others lose to the OS). The
// sum is printed so that the compiler cannot drop the reads.
//
//   cc -O3 -march=native -pthread benches/bandwidth.c -o bandwidth
//   ./bandwidth [THREADS (default 2)] [MiB (default 2048)]
//
// Prints one JSON line: {"threads", "mib", "gb_per_s", "checksum"}.

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct share {
    const uint64_t *from;
    size_t words;
    uint64_t sum;
};

static void *read_share(void *arg) {
    struct share *s = arg;
    // Four independent sums keep several loads in flight per core.
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= s->words; i += 4) {
        a += s->from[i];
        b += s->from[i + 1];
        c += s->from[i + 2];
        d += s->from[i + 3];
    }
    s->sum = a + b + c + d;
    return NULL;
}

// The same with a software prefetch a few KiB ahead, as greve's products
// ask for their weights: on some machines that reads faster than the
// hardware prefetchers alone, and a bound below what an engine reaches
// would be no bound.
static void *read_share_prefetched(void *arg) {
    struct share *s = arg;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 8 <= s->words; i += 8) {
        __builtin_prefetch(s->from + i + 3072 / sizeof(uint64_t), 0, 3);
        a += s->from[i] + s->from[i + 4];
        b += s->from[i + 1] + s->from[i + 5];
        c += s->from[i + 2] + s->from[i + 6];
        d += s->from[i + 3] + s->from[i + 7];
    }
    s->sum = a + b + c + d;
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    size_t mib = argc > 2 ? strtoull(argv[2], NULL, 10) : 2048;
    if (threads < 1 || threads > 256 || mib < 64) {
        fprintf(stderr, "usage: bandwidth [THREADS 1-256] [MiB, at least 64]\n");
        return 2;
    }
    size_t bytes = mib << 20, words = bytes / sizeof(uint64_t);
    uint64_t *buffer = aligned_alloc(4096, bytes);
    if (!buffer) {
        fprintf(stderr, "bandwidth: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    // Written first, so that every page is backed by memory, not the zero page.
    for (size_t i = 0; i < words; i++) buffer[i] = i;

    struct share shares[256];
    pthread_t ids[256];
    double best = 0;
    uint64_t checksum = 0;
    // The two ways alternate, so that both see the same moments of a
    // shared machine; the best pass of either counts.
    for (int pass = 0; pass < 16; pass++) {
        size_t per = words / threads;
        double start = now();
        for (int t = 0; t < threads; t++) {
            shares[t] = (struct share){buffer + t * per, per, 0};
            pthread_create(&ids[t], NULL, pass % 2 ? read_share_prefetched : read_share, &shares[t]);
        }
        for (int t = 0; t < threads; t++) {
            pthread_join(ids[t], NULL);
            checksum += shares[t].sum;
        }
        double rate = (double)(per * threads * sizeof(uint64_t)) / (now() - start) / 1e9;
        if (rate > best) best = rate;
    }
    printf("{\"threads\": %d, \"mib\": %zu, \"gb_per_s\": %.2f, \"checksum\": %llu}\n", threads,
           mib, best, (unsigned long long)checksum);
    free(buffer);
    return 0;
}
