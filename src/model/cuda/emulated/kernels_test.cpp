// kernels.cu run on the CPU (threads.h) against plain references, for each
// element type and for shapes that leave partial warps, blocks and chunks.
// The launch geometry (CHUNK, THREADS, MATVEC_ROWS) comes from ops.rs,
// passed by the test that compiles this file.
#include <algorithm>
#include <bit>
#include <random>
#include <string>

#include "threads.h"
#include "../kernels.cu"

static int cases = 0, failures = 0;

static void check(bool ok, const std::string &what) {
    cases++;
    if (!ok && failures++ < 20) std::fprintf(stderr, "FAILED %s\n", what.c_str());
}

// Rounding to T, written apart from kernels.cu's `store`.
static float to_float(float x) { return x; }
static float to_float(bf16 x) { return __uint_as_float((unsigned)x.bits << 16); }
static float to_float(f16 x) { return (float)std::bit_cast<_Float16>(x.bits); }
template <typename T> T from_float(float x);
template <> float from_float<float>(float x) { return x; }
template <> bf16 from_float<bf16>(float x) {
    const unsigned u = __float_as_uint(x);
    // The neighbours toward zero and away from it.
    const float down = __uint_as_float(u & 0xffff0000u);
    const float up = __uint_as_float((u & 0xffff0000u) + 0x10000u);
    const double dd = std::fabs((double)x - down), du = std::fabs((double)up - x);
    const bool even_down = ((u >> 16) & 1) == 0;
    const bool take_up = du < dd || (du == dd && !even_down);
    return bf16{(unsigned short)((take_up ? (u & 0xffff0000u) + 0x10000u : u) >> 16)};
}
template <> f16 from_float<f16>(float x) {
    return f16{std::bit_cast<unsigned short>((_Float16)x)};
}
template <typename T> float round_to(float x) { return to_float(from_float<T>(x)); }
// The spacing of T's values relative to their size.
template <typename T> constexpr double relative_ulp = 0x1p-23;
template <> constexpr double relative_ulp<bf16> = 0x1p-7;
template <> constexpr double relative_ulp<f16> = 0x1p-10;

// |got - want| within `ulps` of T's spacing at want's size, plus `slack`
// for f32 sums taken in another order than the reference's.
template <typename T>
static bool close(double got, double want, double ulps, double slack) {
    return std::fabs(got - want) <= ulps * relative_ulp<T> * std::fabs(want) + slack + 1e-30;
}

// Device memory: 16-byte aligned, as cudarc's allocations are.
template <typename T> struct Buffer {
    std::vector<uint4> words;
    size_t n;
    explicit Buffer(size_t n) : words((n * sizeof(T) + 15) / 16 + 1), n(n) {}
    T *data() { return reinterpret_cast<T *>(words.data()); }
    T &operator[](size_t i) { return data()[i]; }
    float at(size_t i) { return to_float(data()[i]); }
};

static std::mt19937 rng(7);
template <typename T> static Buffer<T> random_buffer(size_t n, float scale = 1.0f) {
    std::uniform_real_distribution<float> u(-scale, scale);
    Buffer<T> b(n);
    for (size_t i = 0; i < n; i++) b[i] = from_float<T>(u(rng));
    return b;
}

// Each kernel's entry point for T.
template <typename T> struct Kernels;
#define ENTRIES(T, NAME)                                                \
    template <> struct Kernels<T> {                                     \
        static constexpr const char *name = #NAME;                      \
        static constexpr auto attend_chunks = attend_chunks_##NAME;     \
        static constexpr auto merge_chunks = merge_chunks_##NAME;       \
        static constexpr auto silu_mul = silu_mul_##NAME;               \
        static constexpr auto add_rms_norm = add_rms_norm_##NAME;       \
        static constexpr auto matvec = matvec_##NAME;                   \
        static constexpr auto matvec_gated = matvec_gated_##NAME;       \
        static constexpr auto rope = rope_##NAME;                       \
        static constexpr auto write_kv = write_kv_##NAME;               \
    };
ENTRIES(float, f32)
ENTRIES(bf16, bf16)
ENTRIES(f16, f16)

static unsigned blocks(size_t count, unsigned per) { return (unsigned)((count + per - 1) / per); }

template <typename T> static std::string label(const char *kernel, std::string shape) {
    return std::string(kernel) + "_" + Kernels<T>::name + " " + shape;
}

template <typename T> static void test_matvec(int n, int k) {
    auto w = random_buffer<T>((size_t)n * k), x = random_buffer<T>(k);
    Buffer<T> y(n);
    emulated::launch({blocks(n, MATVEC_ROWS)}, {32 * MATVEC_ROWS}, 0,
                     [&] { Kernels<T>::matvec(w.data(), x.data(), y.data(), n, k); });
    bool ok = true;
    for (int r = 0; r < n; r++) {
        double want = 0, size = 0;
        for (int i = 0; i < k; i++) {
            want += (double)w.at((size_t)r * k + i) * x.at(i);
            size += std::fabs((double)w.at((size_t)r * k + i) * x.at(i));
        }
        ok &= close<T>(y.at(r), want, 1, 1e-6 * size);
    }
    check(ok, label<T>("matvec", std::to_string(n) + "x" + std::to_string(k)));
}

static float silu(float g) { return g / (1.0f + std::exp(-g)); }

template <typename T> static void test_matvec_gated(int f, int k) {
    auto w = random_buffer<T>(2 * (size_t)f * k), x = random_buffer<T>(k);
    Buffer<T> y(f);
    emulated::launch({blocks(f, MATVEC_ROWS)}, {32 * MATVEC_ROWS}, 0,
                     [&] { Kernels<T>::matvec_gated(w.data(), x.data(), y.data(), f, k); });
    bool ok = true;
    for (int r = 0; r < f; r++) {
        double gate = 0, up = 0;
        for (int i = 0; i < k; i++) {
            gate += (double)w.at((size_t)r * k + i) * x.at(i);
            up += (double)w.at((size_t)(r + f) * k + i) * x.at(i);
        }
        const double want = silu(round_to<T>(gate)) * round_to<T>(up);
        // gate and up are each rounded to T: a sum on the other side of a
        // rounding boundary moves the result by their spacing.
        ok &= close<T>(y.at(r), want, 4, 1e-5 * std::sqrt((double)k));
    }
    check(ok, label<T>("matvec_gated", std::to_string(f) + "x" + std::to_string(k)));
}

template <typename T> static void test_silu_mul(int rows, int f) {
    const long long stride = 2 * f;  // a stacked [gate | up] product's halves
    auto both = random_buffer<T>(rows * stride, 4.0f);
    Buffer<T> y((size_t)rows * f);
    emulated::launch({blocks(f, THREADS), (unsigned)rows}, {THREADS}, 0, [&] {
        Kernels<T>::silu_mul(both.data(), both.data() + f, y.data(), f, stride);
    });
    bool ok = true;
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < f; j++) {
            const double want = silu(both.at(r * stride + j)) * both.at(r * stride + f + j);
            ok &= close<T>(y.at((size_t)r * f + j), want, 1, 1e-6);
        }
    check(ok, label<T>("silu_mul", std::to_string(rows) + "x" + std::to_string(f)));
}

template <typename T> static void test_add_rms_norm(int rows, int d) {
    auto x = random_buffer<T>((size_t)rows * d), y = random_buffer<T>((size_t)rows * d);
    auto w = random_buffer<T>(d, 2.0f);
    Buffer<T> sum((size_t)rows * d), out((size_t)rows * d);
    const float eps = 1e-5f;
    const unsigned threads = std::min(std::max((d + 31) / 32, 1), 32) * 32;
    emulated::launch({(unsigned)rows}, {threads}, 0, [&] {
        Kernels<T>::add_rms_norm(x.data(), y.data(), w.data(), sum.data(), out.data(), d, eps);
    });
    bool sums = true, normed = true;
    for (int r = 0; r < rows; r++) {
        double squares = 0;
        for (int i = 0; i < d; i++) {
            const size_t at = (size_t)r * d + i;
            const float s = round_to<T>(x.at(at) + y.at(at));
            sums &= sum.at(at) == s;
            squares += (double)s * s;
        }
        const double scale = 1.0 / std::sqrt(squares / d + eps);
        for (int i = 0; i < d; i++) {
            const size_t at = (size_t)r * d + i;
            normed &= close<T>(out.at(at), sum.at(at) * scale * w.at(i), 1, 1e-6);
        }
    }
    check(sums, label<T>("add_rms_norm sums", std::to_string(rows) + "x" + std::to_string(d)));
    check(normed, label<T>("add_rms_norm", std::to_string(rows) + "x" + std::to_string(d)));
}

// (heads, n, hd) laid out by head, or by position (a (n, heads, hd) view).
struct Layout {
    long long head_stride, pos_stride;
};
static Layout heads_layout(bool by_position, int heads, int n, int hd) {
    return by_position ? Layout{hd, (long long)heads * hd} : Layout{(long long)n * hd, hd};
}

template <typename T> static void test_rope(int heads, int n, int hd, bool interleaved,
                                            bool by_position) {
    const Layout l = heads_layout(by_position, heads, n, hd);
    auto x = random_buffer<T>((size_t)heads * n * hd);
    const Buffer<T> before = x;
    const int half = hd / 2;
    Buffer<T> cos(n * half), sin(n * half);
    for (int p = 0; p < n; p++)
        for (int d = 0; d < half; d++) {
            const double angle = (p + 3) * std::pow(10000.0, -2.0 * d / hd);
            cos[p * half + d] = from_float<T>(std::cos(angle));
            sin[p * half + d] = from_float<T>(std::sin(angle));
        }
    const size_t pairs = (size_t)heads * n * half;
    emulated::launch({blocks(pairs, THREADS)}, {THREADS}, 0, [&] {
        Kernels<T>::rope(x.data(), cos.data(), sin.data(), heads, n, hd, l.head_stride,
                         l.pos_stride, interleaved);
    });
    bool ok = true;
    Buffer<T> old = before;
    for (int h = 0; h < heads; h++)
        for (int p = 0; p < n; p++)
            for (int d = 0; d < half; d++) {
                const size_t row = h * l.head_stride + p * l.pos_stride;
                const size_t a = row + (interleaved ? 2 * d : d);
                const size_t b = row + (interleaved ? 2 * d + 1 : d + half);
                const float c = cos.at(p * half + d), s = sin.at(p * half + d);
                const float xa = old.at(a), xb = old.at(b);
                ok &= x.at(a) == round_to<T>(round_to<T>(xa * c) - round_to<T>(xb * s));
                ok &= x.at(b) == round_to<T>(round_to<T>(xa * s) + round_to<T>(xb * c));
            }
    check(ok, label<T>("rope", std::to_string(heads) + "x" + std::to_string(n) + "x" +
                                   std::to_string(hd) + (interleaved ? " interleaved" : "") +
                                   (by_position ? " by position" : "")));
}

template <typename T> static void test_write_kv(int heads, int n, int hd, int capacity, int at,
                                                bool by_position) {
    const Layout l = heads_layout(by_position, heads, n, hd);
    auto k = random_buffer<T>((size_t)heads * n * hd), v = random_buffer<T>((size_t)heads * n * hd);
    const size_t size = 2 * (size_t)heads * capacity * hd;
    Buffer<T> cache(size);
    const T untouched = from_float<T>(1234.0f);
    for (size_t i = 0; i < size; i++) cache[i] = untouched;
    emulated::launch({blocks(2 * (size_t)heads * n * hd, THREADS)}, {THREADS}, 0, [&] {
        Kernels<T>::write_kv(cache.data(), k.data(), v.data(), heads, n, hd, capacity, at,
                             l.head_stride, l.pos_stride);
    });
    bool ok = true;
    for (int which = 0; which < 2; which++)
        for (int h = 0; h < heads; h++)
            for (int p = 0; p < capacity; p++)
                for (int d = 0; d < hd; d++) {
                    const float got = cache.at((((size_t)which * heads + h) * capacity + p) * hd + d);
                    const bool written = p >= at && p < at + n;
                    Buffer<T> &src = which == 0 ? k : v;
                    const float want = written
                        ? src.at(h * l.head_stride + (p - at) * l.pos_stride + d)
                        : to_float(untouched);
                    ok &= got == want;
                }
    check(ok, label<T>("write_kv", std::to_string(heads) + "x" + std::to_string(n) + " at " +
                                       std::to_string(at) + (by_position ? " by position" : "")));
}

// One new token's attention: q (kv_heads * group, hd) over positions
// start..len of a cache (kv_heads, capacity, hd).
template <typename T> static void test_attention(int kv_heads, int group, int hd, int start,
                                                 int len) {
    const int heads = kv_heads * group, capacity = len + 7;
    auto q = random_buffer<T>((size_t)heads * hd, 2.0f);
    auto k = random_buffer<T>((size_t)kv_heads * capacity * hd, 2.0f);
    auto v = random_buffer<T>((size_t)kv_heads * capacity * hd);
    const long long kv_stride = (long long)capacity * hd, pos_stride = hd;
    const int chunks = (len - start + CHUNK - 1) / CHUNK;
    const float scale = 1.0f / std::sqrt((float)hd);
    const size_t parts = (size_t)heads * chunks;
    std::vector<float> scratch(parts * (2 + hd));
    float *part_max = scratch.data(), *part_sum = part_max + parts, *part_acc = part_sum + parts;
    Buffer<T> y((size_t)heads * hd);
    const size_t shared = (size_t)group * (hd + 1 + CHUNK) * sizeof(float);
    emulated::launch({(unsigned)kv_heads, (unsigned)chunks}, {THREADS}, shared, [&] {
        Kernels<T>::attend_chunks(q.data(), k.data(), v.data(), part_max, part_sum, part_acc,
                                  y.data(), hd, group, start, len, kv_stride, pos_stride, scale,
                                  CHUNK);
    });
    if (chunks > 1)
        emulated::launch({(unsigned)heads}, {THREADS}, 0, [&] {
            Kernels<T>::merge_chunks(part_max, part_sum, part_acc, y.data(), hd, chunks);
        });
    bool ok = true;
    for (int head = 0; head < heads; head++) {
        const int kvh = head / group;
        std::vector<double> p(len);
        double max = -INFINITY, total = 0;
        for (int t = start; t < len; t++) {
            double s = 0;
            for (int d = 0; d < hd; d++)
                s += (double)q.at((size_t)head * hd + d) * k.at(kvh * kv_stride + t * pos_stride + d);
            p[t] = s * scale;
            max = std::max(max, p[t]);
        }
        for (int t = start; t < len; t++) total += p[t] = std::exp(p[t] - max);
        for (int d = 0; d < hd; d++) {
            double want = 0;
            for (int t = start; t < len; t++)
                want += p[t] / total * v.at(kvh * kv_stride + t * pos_stride + d);
            ok &= close<T>(y.at((size_t)head * hd + d), want, 1, 1e-5);
        }
    }
    check(ok, label<T>("attention", std::to_string(kv_heads) + "x" + std::to_string(group) +
                                        "x" + std::to_string(hd) + " positions " +
                                        std::to_string(start) + ".." + std::to_string(len)));
}

template <typename T> static void test_all() {
    for (int k : {520, 4096}) {  // 520: a partial round of loads per lane
        test_matvec<T>(37, k);    // 37: a partial block of rows
        test_matvec_gated<T>(21, k);
    }
    test_silu_mul<T>(2, 300);
    for (int d : {100, 4096, 8192}) test_add_rms_norm<T>(3, d);
    for (bool interleaved : {false, true})
        for (bool by_position : {false, true}) test_rope<T>(3, 5, 16, interleaved, by_position);
    for (bool by_position : {false, true}) test_write_kv<T>(2, 3, 8, 10, 4, by_position);
    test_attention<T>(2, 4, 128, 0, 1);
    test_attention<T>(2, 4, 128, 0, 50);
    test_attention<T>(2, 4, 128, 0, CHUNK);
    test_attention<T>(2, 4, 128, 0, 3 * CHUNK + 9);  // chunks merged, the last partial
    test_attention<T>(1, 3, 64, 40, 2 * CHUNK + 50);  // a window: positions from 40 on
}

int main() {
    test_all<float>();
    test_all<bf16>();
    test_all<f16>();
    std::printf("%d cases, %d failed\n", cases, failures);
    return failures == 0 ? 0 : 1;
}
