// greve's own CUDA kernels, where candle's operations cost a launch (and
// an allocation) each for little work: one new token's attention over the
// cache, the feed-forward's gate, the residual add with the norm after it.
// Compiled at run time by NVRTC, without headers: 16-bit floats are carried
// as their bits and widened here. Sums are f32 whatever the tensors hold.
// The tests also compile this file for the CPU (`cuda/emulated.rs`), with a
// stand-in for CUDA's threads: PTX is used only under __CUDA_ARCH__, and
// dynamic shared memory is declared through DYNAMIC_SHARED.

#ifndef DYNAMIC_SHARED
#define DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

struct bf16 {
    unsigned short bits;
};
struct f16 {
    unsigned short bits;
};

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen(bf16 x) { return __uint_as_float(((unsigned)x.bits) << 16); }
__device__ __forceinline__ float widen(f16 x) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
#else
    return emulated_f16_to_f32(x.bits);
#endif
}

__device__ __forceinline__ void store(float *p, float x) { *p = x; }
__device__ __forceinline__ void store(bf16 *p, float x) {
    unsigned u = __float_as_uint(x);
    // Round to nearest even; a NaN stays a (quiet) NaN.
    p->bits = (x != x) ? 0x7fc0 : (unsigned short)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
__device__ __forceinline__ void store(f16 *p, float x) {
#ifdef __CUDA_ARCH__
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    p->bits = h;
#else
    p->bits = emulated_f32_to_f16(x);
#endif
}

// x rounded to T and widened back: an elementwise operation's result.
template <typename T>
__device__ __forceinline__ float rounded(float x) {
    T t;
    store(&t, x);
    return widen(t);
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffff, x, o);
    return x;
}
__device__ __forceinline__ float block_sum(float x) {
    __shared__ float warps[32];
    x = warp_sum(x);
    if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = x;
    __syncthreads();
    x = threadIdx.x % 32 < blockDim.x / 32 ? warps[threadIdx.x % 32] : 0.0f;
    return warp_sum(x);
}
__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, o));
    return x;
}

// Decoding's attention: the query heads of one new token against every
// cached position, split over chunks of positions so that a long context
// keeps the whole GPU busy (flash decoding). Phase 1 runs a block per
// (KV head, chunk): it scores the chunk for the query heads that share the
// KV head, and keeps per head the chunk's maximum score, its sum of
// exponentials and the values weighted by them. Phase 2 merges the chunks
// of each query head; a context of one chunk is done in phase 1.
//
// q: (heads, hd), heads = kv_heads * group, head j served by KV head
// j / group. k, v: position p of KV head h at h * kv_stride + p * pos_stride.
// Positions start..len are attended, `chunk` of them per block. part_*:
// (heads, chunks[, hd]); a single chunk writes y, (heads, hd), at once.
template <typename T>
__device__ void attend_chunks(const T *q, const T *k, const T *v, float *part_max,
                              float *part_sum, float *part_acc, T *y, int hd, int group,
                              int start, int len, long long kv_stride, long long pos_stride,
                              float scale, int chunk) {
    DYNAMIC_SHARED(float, shared);
    float *qs = shared;             // group * hd, scaled
    float *sums = qs + group * hd;  // group
    float *p = sums + group;        // group * chunk: scores, then exponentials
    const int kvh = blockIdx.x, c = blockIdx.y, chunks = gridDim.y;
    const int first = start + c * chunk;
    const int count = min(chunk, len - first);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const T *kh = k + kvh * kv_stride + first * pos_stride;
    const T *vh = v + kvh * kv_stride + first * pos_stride;

    for (int i = threadIdx.x; i < group * hd; i += blockDim.x)
        qs[i] = widen(q[(long long)kvh * group * hd + i]) * scale;
    __syncthreads();

    // A warp per position: its key against each query head of the group.
    for (int i = warp; i < count; i += warps) {
        const T *key = kh + i * pos_stride;
        for (int g = 0; g < group; g++) {
            float s = 0.0f;
            for (int d = lane; d < hd; d += 32) s += qs[g * hd + d] * widen(key[d]);
            s = warp_sum(s);
            if (lane == 0) p[g * chunk + i] = s;
        }
    }
    __syncthreads();

    // A warp per query head: the chunk's maximum and sum of exponentials.
    for (int g = warp; g < group; g += warps) {
        float m = __int_as_float(0xff800000);
        for (int i = lane; i < count; i += 32) m = fmaxf(m, p[g * chunk + i]);
        m = warp_max(m);
        float l = 0.0f;
        for (int i = lane; i < count; i += 32) {
            float e = expf(p[g * chunk + i] - m);
            p[g * chunk + i] = e;
            l += e;
        }
        l = warp_sum(l);
        if (lane == 0) {
            const int head = kvh * group + g;
            sums[g] = l;
            if (chunks > 1) {
                part_max[head * chunks + c] = m;
                part_sum[head * chunks + c] = l;
            }
        }
    }
    __syncthreads();

    // A thread per (query head, dimension): neighbouring threads read
    // neighbouring values of a position; the loop is unrolled so that
    // several positions' loads are in flight at once.
    for (int j = threadIdx.x; j < group * hd; j += blockDim.x) {
        const int g = j / hd, d = j % hd;
        const float *pg = p + g * chunk;
        float a = 0.0f;
#pragma unroll 8
        for (int i = 0; i < count; i++) a += pg[i] * widen(vh[i * pos_stride + d]);
        const long long head = kvh * group + g;
        if (chunks > 1)
            part_acc[(head * chunks + c) * hd + d] = a;
        else
            store(&y[head * hd + d], a / sums[g]);
    }
}

// A block per query head: the chunks rescaled to the overall maximum.
template <typename T>
__device__ void merge_chunks(const float *part_max, const float *part_sum, const float *part_acc,
                             T *y, int hd, int chunks) {
    const int head = blockIdx.x;
    const float *pm = part_max + head * chunks, *pl = part_sum + head * chunks;
    float m = __int_as_float(0xff800000);
    for (int c = 0; c < chunks; c++) m = fmaxf(m, pm[c]);
    float l = 0.0f;
    for (int c = 0; c < chunks; c++) l += pl[c] * expf(pm[c] - m);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (int c = 0; c < chunks; c++)
            a += part_acc[((long long)head * chunks + c) * hd + d] * expf(pm[c] - m);
        store(&y[(long long)head * hd + d], a / l);
    }
}

#define KERNELS(T, NAME)                                                                         \
    extern "C" __global__ void attend_chunks_##NAME(                                             \
        const T *q, const T *k, const T *v, float *part_max, float *part_sum, float *part_acc,  \
        T *y, int hd, int group, int start, int len, long long kv_stride, long long pos_stride, \
        float scale, int chunk) {                                                               \
        attend_chunks<T>(q, k, v, part_max, part_sum, part_acc, y, hd, group, start, len,       \
                         kv_stride, pos_stride, scale, chunk);                                  \
    }                                                                                           \
    extern "C" __global__ void merge_chunks_##NAME(const float *part_max, const float *part_sum, \
                                                   const float *part_acc, T *y, int hd,          \
                                                   int chunks) {                                 \
        merge_chunks<T>(part_max, part_sum, part_acc, y, hd, chunks);                           \
    }

// The feed-forward's gate, silu(gate) * up, rounded once. Row r of gate
// and up starts r * stride elements in (a stacked [gate | up] product's
// halves, or two tensors). Grid: (columns / block, rows).
template <typename T>
__device__ void silu_mul(const T *gate, const T *up, T *y, int f, long long stride) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const long long r = blockIdx.y;
    if (j >= f) return;
    const float g = widen(gate[r * stride + j]);
    store(&y[r * f + j], g / (1.0f + expf(-g)) * widen(up[r * stride + j]));
}

// The residual add and the RMSNorm after it, a block per row: sum = x + y
// rounded to T (as a separate add stores it), out = sum / rms(sum) * w.
// A thread keeps its NORM_PER_THREAD elements (at most) in registers, and
// every load is issued before the block's sum: one memory latency, where
// reading the sums back after it cost a second (6.9 µs a call on an H100).
#define NORM_PER_THREAD 8
template <typename T>
__device__ void add_rms_norm(const T *x, const T *y, const T *w, T *sum, T *out, int d,
                             float eps) {
    const long long row = blockIdx.x * (long long)d;
    float s[NORM_PER_THREAD], weight[NORM_PER_THREAD];
    float squares = 0.0f;
#pragma unroll
    for (int j = 0; j < NORM_PER_THREAD; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < d) {
            s[j] = rounded<T>(widen(x[row + i]) + widen(y[row + i]));
            weight[j] = widen(w[i]);
            store(&sum[row + i], s[j]);
            squares += s[j] * s[j];
        }
    }
    const float scale = rsqrtf(block_sum(squares) / d + eps);
#pragma unroll
    for (int j = 0; j < NORM_PER_THREAD; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < d) store(&out[row + i], s[j] * scale * weight[j]);
    }
}

// One activation row times a matrix, y[r] = w[r] · x for w (n, k) by rows:
// decoding's products, where every weight is read once per token and the
// time is the time to stream them. cuBLAS split some of these shapes over k
// and reduced the parts in a second kernel, and left the 4096 × 4096 output
// projection at half the bandwidth. Here a warp takes a row in 16-byte
// loads, eight in flight per lane (four left the 14336-wide rows of the
// feed-forward's down projection at 2.6 TB/s of the H100's 3), the weights
// marked evict-first so that x stays in cache for the other warps. Needs
// 16-byte aligned rows.
#define IN_FLIGHT 8
__device__ __forceinline__ uint4 load_streaming(const uint4 *p) {
#ifdef __CUDA_ARCH__
    uint4 v;
    asm("ld.global.cs.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
#else
    return *p;
#endif
}
// a · b + acc over the elements packed in one 32-bit word of each.
__device__ __forceinline__ float dot_word(unsigned a, unsigned b, float acc, float) {
    return fmaf(__uint_as_float(a), __uint_as_float(b), acc);
}
__device__ __forceinline__ float dot_word(unsigned a, unsigned b, float acc, bf16) {
    acc = fmaf(__uint_as_float(a << 16), __uint_as_float(b << 16), acc);
    return fmaf(__uint_as_float(a & 0xffff0000u), __uint_as_float(b & 0xffff0000u), acc);
}
__device__ __forceinline__ float dot_word(unsigned a, unsigned b, float acc, f16) {
    const f16 a0 = {(unsigned short)a}, a1 = {(unsigned short)(a >> 16)};
    const f16 b0 = {(unsigned short)b}, b1 = {(unsigned short)(b >> 16)};
    return fmaf(widen(a1), widen(b1), fmaf(widen(a0), widen(b0), acc));
}
template <typename T>
__device__ __forceinline__ float dot_words(uint4 a, uint4 b, float acc) {
    acc = dot_word(a.x, b.x, acc, T());
    acc = dot_word(a.y, b.y, acc, T());
    acc = dot_word(a.z, b.z, acc, T());
    return dot_word(a.w, b.w, acc, T());
}

// R rows of 16-byte words against x, each summed over the warp into
// acc[r]: IN_FLIGHT loads per lane issued before their products.
template <typename T, int R>
__device__ __forceinline__ void dot_rows(const uint4 *const (&rows)[R], const uint4 *xs, int words,
                                         float (&acc)[R]) {
    constexpr int per = IN_FLIGHT / R;
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    int i = threadIdx.x % 32;
    for (; i + 32 * (per - 1) < words; i += 32 * per) {
        uint4 a[R][per];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int j = 0; j < per; j++) a[r][j] = load_streaming(rows[r] + i + 32 * j);
#pragma unroll
        for (int j = 0; j < per; j++) {
            const uint4 x = xs[i + 32 * j];
#pragma unroll
            for (int r = 0; r < R; r++) acc[r] = dot_words<T>(a[r][j], x, acc[r]);
        }
    }
    for (; i < words; i += 32) {
        const uint4 x = xs[i];
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] = dot_words<T>(load_streaming(rows[r] + i), x, acc[r]);
    }
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
}

template <typename T>
__device__ void matvec(const T *__restrict__ w, const T *__restrict__ x, T *y, int n, int k) {
    const long long r = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= n) return;  // the whole warp
    const uint4 *rows[1] = {(const uint4 *)(w + r * k)};
    float acc[1];
    dot_rows<T, 1>(rows, (const uint4 *)x, k * (int)sizeof(T) / 16, acc);
    if (threadIdx.x % 32 == 0) store(&y[r], acc[0]);
}

// The feed-forward's gate and up products and silu(gate) * up after them,
// for one activation row: w stacks the gate's f rows over the up's, and a
// warp takes row r of each, so the gate costs no kernel of its own. Gate
// and up are rounded to T first, as the separate products store them.
template <typename T>
__device__ void matvec_gated(const T *__restrict__ w, const T *__restrict__ x, T *y, int f,
                             int k) {
    const long long r = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= f) return;
    const uint4 *rows[2] = {(const uint4 *)(w + r * k), (const uint4 *)(w + (r + f) * k)};
    float acc[2];
    dot_rows<T, 2>(rows, (const uint4 *)x, k * (int)sizeof(T) / 16, acc);
    const float gate = rounded<T>(acc[0]), up = rounded<T>(acc[1]);
    if (threadIdx.x % 32 == 0) store(&y[r], gate / (1.0f + expf(-gate)) * up);
}


// The rotary embedding in place, a thread per rotated pair: x (heads, n,
// hd), position p of head h at h * head_stride + p * pos_stride; cos, sin
// (n, hd / 2). Pairs are (d, d + hd / 2), or (2d, 2d + 1) when interleaved.
// Each product and each sum is rounded to T, as transformers' elementwise
// operations round them.
template <typename T>
__device__ void rope(T *x, const T *cos, const T *sin, int heads, int n, int hd,
                     long long head_stride, long long pos_stride, int interleaved) {
    const int half = hd / 2;
    const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)heads * n * half) return;
    const int d = i % half, p = (i / half) % n;
    const long long h = i / half / n;
    T *row = x + h * head_stride + p * pos_stride;
    const int a = interleaved ? 2 * d : d, b = interleaved ? 2 * d + 1 : d + half;
    const float c = widen(cos[p * half + d]), s = widen(sin[p * half + d]);
    const float xa = widen(row[a]), xb = widen(row[b]);
    store(&row[a], rounded<T>(xa * c) - rounded<T>(xb * s));
    store(&row[b], rounded<T>(xa * s) + rounded<T>(xb * c));
}

// New keys and values into the cache, a thread per element: k, v (heads,
// n, hd) at the given strides (alike for both); cache (2, heads, capacity,
// hd), contiguous, keys then values, the n positions written from `at`.
template <typename T>
__device__ void write_kv(T *cache, const T *k, const T *v, int heads, int n, int hd,
                         int capacity, int at, long long head_stride, long long pos_stride) {
    const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const long long per = (long long)heads * n * hd;
    if (i >= 2 * per) return;
    const int d = i % hd, p = (i / hd) % n;
    const long long h = (i / hd / n) % heads, which = i / per;
    const T *src = which == 0 ? k : v;
    cache[((which * heads + h) * capacity + at + p) * hd + d] =
        src[h * head_stride + p * pos_stride + d];
}

#define ELEMENTWISE(T, NAME)                                                                    \
    extern "C" __global__ void silu_mul_##NAME(const T *gate, const T *up, T *y, int f,          \
                                               long long stride) {                              \
        silu_mul<T>(gate, up, y, f, stride);                                                    \
    }                                                                                           \
    extern "C" __global__ void add_rms_norm_##NAME(const T *x, const T *y, const T *w, T *sum,  \
                                                   T *out, int d, float eps) {                  \
        add_rms_norm<T>(x, y, w, sum, out, d, eps);                                             \
    }                                                                                           \
    extern "C" __global__ void matvec_##NAME(const T *w, const T *x, T *y, int n, int k) {      \
        matvec<T>(w, x, y, n, k);                                                               \
    }                                                                                           \
    extern "C" __global__ void matvec_gated_##NAME(const T *w, const T *x, T *y, int f, int k) {\
        matvec_gated<T>(w, x, y, f, k);                                                         \
    }                                                                                           \
    extern "C" __global__ void rope_##NAME(T *x, const T *cos, const T *sin, int heads, int n,  \
                                           int hd, long long head_stride,                       \
                                           long long pos_stride, int interleaved) {             \
        rope<T>(x, cos, sin, heads, n, hd, head_stride, pos_stride, interleaved);               \
    }                                                                                           \
    extern "C" __global__ void write_kv_##NAME(T *cache, const T *k, const T *v, int heads,     \
                                               int n, int hd, int capacity, int at,             \
                                               long long head_stride, long long pos_stride) {   \
        write_kv<T>(cache, k, v, heads, n, hd, capacity, at, head_stride, pos_stride);          \
    }

KERNELS(float, f32)
KERNELS(bf16, bf16)
KERNELS(f16, f16)
ELEMENTWISE(float, f32)
ELEMENTWISE(bf16, bf16)
ELEMENTWISE(f16, f16)
