// CUDA's execution model on a CPU, enough of it to run kernels.cu: a
// block's threads are coroutines (ucontext) taking turns on one OS thread,
// each running until it waits at a barrier (__syncthreads, or a warp's
// shuffle) or ends; a barrier opens when every thread of its block or warp
// that has not ended waits there. Blocks run one after another (so
// `static` serves for __shared__); device memory is host memory. It checks
// what the kernels compute, not how fast.
#include <ucontext.h>

#include <bit>
#include <cmath>  // expf, fmaf, fmaxf
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static
#define DYNAMIC_SHARED(T, name) T *name = reinterpret_cast<T *>(emulated::dynamic_shared)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint4 {
    unsigned x, y, z, w;
};

namespace emulated {
alignas(16) inline unsigned char dynamic_shared[228 * 1024];

enum class State { running, at_block_barrier, at_warp_barrier, ended };
struct Thread {
    ucontext_t context;
    State state;
};
constexpr size_t STACK = 64 * 1024;

inline dim3 grid_dim, block_dim, block_idx, thread_idx;
inline ucontext_t scheduler;
inline std::vector<Thread> threads;
inline std::vector<std::vector<char>> stacks;
inline std::vector<float> lanes;  // the shuffles' exchange
inline std::function<void()> body;

inline void wait_at(State barrier) {
    Thread &t = threads[thread_idx.x];
    t.state = barrier;
    swapcontext(&t.context, &scheduler);
}

inline void start() {
    body();
    threads[thread_idx.x].state = State::ended;
}  // and on to `scheduler`, the context's successor

// Opens the barriers every waiting thread of a block or warp has reached;
// false when there were none (the threads left are deadlocked).
inline bool open_barriers() {
    bool opened = false;
    auto open = [&](size_t from, size_t to, State barrier) {
        bool all = true, any = false;
        for (size_t i = from; i < to; i++) {
            all &= threads[i].state == barrier || threads[i].state == State::ended;
            any |= threads[i].state == barrier;
        }
        if (!all || !any) return;
        for (size_t i = from; i < to; i++)
            if (threads[i].state == barrier) threads[i].state = State::running;
        opened = true;
    };
    open(0, threads.size(), State::at_block_barrier);
    for (size_t w = 0; w < threads.size(); w += 32) open(w, w + 32, State::at_warp_barrier);
    return opened;
}

// Runs `kernel` as every thread of a grid would.
template <typename F>
void launch(dim3 grid, dim3 block, size_t shared_bytes, F kernel) {
    if (block.x % 32 != 0 || block.y != 1 || block.z != 1 ||
        shared_bytes > sizeof(dynamic_shared)) {
        std::fprintf(stderr, "launch: blocks of whole warps along x only\n");
        std::exit(2);
    }
    grid_dim = grid;
    block_dim = block;
    body = kernel;
    threads.resize(block.x);
    lanes.resize(block.x);
    while (stacks.size() < block.x) stacks.emplace_back(STACK);
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                block_idx = {x, y, z};
                for (unsigned i = 0; i < block.x; i++) {
                    Thread &t = threads[i];
                    t.state = State::running;
                    getcontext(&t.context);
                    t.context.uc_stack = {stacks[i].data(), 0, STACK};
                    t.context.uc_link = &scheduler;
                    makecontext(&t.context, start, 0);
                }
                for (;;) {
                    for (unsigned i = 0; i < block.x; i++) {
                        if (threads[i].state != State::running) continue;
                        thread_idx = {i, 0, 0};
                        swapcontext(&scheduler, &threads[i].context);
                    }
                    bool ended = true;
                    for (auto &t : threads) ended &= t.state == State::ended;
                    if (ended) break;
                    if (!open_barriers()) {
                        std::fprintf(stderr, "launch: threads wait at barriers others skip\n");
                        std::exit(2);
                    }
                }
            }
}
}  // namespace emulated

#define threadIdx (emulated::thread_idx)
#define blockIdx (emulated::block_idx)
#define blockDim (emulated::block_dim)
#define gridDim (emulated::grid_dim)

inline void __syncthreads() { emulated::wait_at(emulated::State::at_block_barrier); }

inline float __shfl_xor_sync(unsigned, float x, int mask) {
    const unsigned t = threadIdx.x;
    emulated::lanes[t] = x;
    emulated::wait_at(emulated::State::at_warp_barrier);
    const float other = emulated::lanes[t ^ (unsigned)mask];  // within the warp: mask < 32
    emulated::wait_at(emulated::State::at_warp_barrier);
    return other;
}

inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int min(int a, int b) { return a < b ? a : b; }

inline float emulated_f16_to_f32(unsigned short bits) { return std::bit_cast<_Float16>(bits); }
inline unsigned short emulated_f32_to_f16(float x) {
    return std::bit_cast<unsigned short>((_Float16)x);
}
