// Warp, block and whole-grid reductions for the RawKernels (device only: warp shuffles and atomics).
//
// Sums are deterministic: every reduction runs in a fixed order for a given launch shape, and the
// grid-wide total is formed by the last block to finish, which adds the per-block partials in index
// order (the "last block" pattern of CUDA's threadFenceReduction sample). No float atomics.
// Blocks must have a multiple of 32 threads, at most 1024.
#ifndef GPUMLP_REDUCE_CUH
#define GPUMLP_REDUCE_CUH

#define GPUMLP_FULL_MASK 0xffffffffu

// Sum over the 32 lanes of a warp; every lane gets the total (butterfly).
template <typename F> __device__ __forceinline__ F gpumlp_warp_sum(F v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(GPUMLP_FULL_MASK, v, offset);
    return v;
}

// Max over the 32 lanes of a warp; every lane gets it. NaN is skipped here (a NaN logit still makes
// the row's loss NaN through exp(NaN − m)).
template <typename F> __device__ __forceinline__ F gpumlp_warp_max(F v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const F other = __shfl_xor_sync(GPUMLP_FULL_MASK, v, offset);
        v = other > v ? other : v;
    }
    return v;
}

// Sum over the block; the result is valid in thread 0. Every thread of the block must call it.
template <typename F> __device__ F gpumlp_block_sum(F v) {
    __shared__ F warp_sums[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = gpumlp_warp_sum(v);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)((blockDim.x + 31) >> 5) ? warp_sums[lane] : F(0);
        v = gpumlp_warp_sum(v);
    }
    __syncthreads();  // warp_sums may be reused by the next call
    return v;
}

// Grid-wide sum of one value per block into *out, in one launch: each block stores its partial,
// the last block to arrive adds all partials in index order and resets the counter for the next
// launch. partial holds gridDim.x values; counter is one zero-initialised unsigned int.
// Every thread of every block must call it, with its block's total in thread 0.
template <typename F>
__device__ void gpumlp_grid_sum(F block_total, F* partial, unsigned int* counter, F* out) {
    __shared__ bool is_last;
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = block_total;
        __threadfence();  // the partial is visible to every block before the ticket is taken
        const unsigned int ticket = atomicAdd(counter, 1u);
        is_last = ticket == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    const volatile F* p = partial;  // written by other blocks: read past this SM's L1
    F v = F(0);
    for (unsigned int i = threadIdx.x; i < gridDim.x; i += blockDim.x) v += p[i];
    v = gpumlp_block_sum(v);
    if (threadIdx.x == 0) {
        *out = v;
        *counter = 0u;
    }
}

// *dst = value once every block of the grid has finished, stored by the last block to arrive:
// what each block read from *dst before calling this is the value from before the launch. Every
// thread of every block must call it; blocks_done is one zero-initialised unsigned int, reset here.
template <typename T> __device__ void gpumlp_store_after_grid(T* dst, T value, unsigned int* blocks_done) {
    __syncthreads();  // every thread of this block is past its reads of *dst
    if (threadIdx.x == 0) {
        __threadfence();
        if (atomicAdd(blocks_done, 1u) == gridDim.x - 1) {
            *dst = value;
            *blocks_done = 0u;
        }
    }
}

#endif  // GPUMLP_REDUCE_CUH
