// greve's own CUDA kernels, where candle's operations cost a launch (and
// an allocation) each for little work: one new token's attention over the
// cache, the feed-forward's gate, the residual add with the norm after it.
// Compiled at run time by NVRTC, without headers: 16-bit floats are carried
// as their bits and widened here. Sums are f32 whatever the tensors hold.

struct bf16 {
    unsigned short bits;
};
struct f16 {
    unsigned short bits;
};

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen(bf16 x) { return __uint_as_float(((unsigned)x.bits) << 16); }
__device__ __forceinline__ float widen(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}

__device__ __forceinline__ void store(float *p, float x) { *p = x; }
__device__ __forceinline__ void store(bf16 *p, float x) {
    unsigned u = __float_as_uint(x);
    // Round to nearest even; a NaN stays a (quiet) NaN.
    p->bits = (x != x) ? 0x7fc0 : (unsigned short)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}
__device__ __forceinline__ void store(f16 *p, float x) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    p->bits = h;
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
    extern __shared__ float shared[];
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
template <typename T>
__device__ void add_rms_norm(const T *x, const T *y, const T *w, T *sum, T *out, int d,
                             float eps) {
    const long long row = blockIdx.x * (long long)d;
    float squares = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        T s;
        store(&s, widen(x[row + i]) + widen(y[row + i]));
        sum[row + i] = s;
        const float v = widen(s);
        squares += v * v;
    }
    const float scale = rsqrtf(block_sum(squares) / d + eps);
    // Each thread reads back only what it wrote itself.
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        store(&out[row + i], widen(sum[row + i]) * scale * widen(w[i]));
}

#define ELEMENTWISE(T, NAME)                                                                    \
    extern "C" __global__ void silu_mul_##NAME(const T *gate, const T *up, T *y, int f,          \
                                               long long stride) {                              \
        silu_mul<T>(gate, up, y, f, stride);                                                    \
    }                                                                                           \
    extern "C" __global__ void add_rms_norm_##NAME(const T *x, const T *y, const T *w, T *sum,  \
                                                   T *out, int d, float eps) {                  \
        add_rms_norm<T>(x, y, w, sum, out, d, eps);                                             \
    }

KERNELS(float, f32)
KERNELS(bf16, bf16)
KERNELS(f16, f16)
ELEMENTWISE(float, f32)
ELEMENTWISE(bf16, bf16)
ELEMENTWISE(f16, f16)
