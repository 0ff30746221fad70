// Σ a_i (square = 0) or Σ a_i² (square = 1) of a contiguous vector into the 0-d *out, in one
// launch and deterministically (gpumlp_grid_sum). Used for s = λ/2 ‖W‖² (NumPy twin: the
// regulariser, functions.regulariser / NumpyOps.sq_norm) and for Σw of the per-example weights.
// Grid-stride loop; blocks of a multiple of 32 threads; partial holds gridDim.x values.
#include "gpumlp_reduce.cuh"

template <typename F>
__device__ void gpumlp_sum(const F* __restrict__ a, long long n, int square, F* out, F* partial,
                           unsigned int* counter) {
    F v = F(0);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const F x = a[i];
        v += square ? x * x : x;
    }
    gpumlp_grid_sum(gpumlp_block_sum(v), partial, counter, out);
}

#define GPUMLP_SUM_KERNELS(F, SUFFIX)                                                                    \
    extern "C" __global__ void gpumlp_sum##SUFFIX(const F* a, long long n, int square, F* out, F* partial, \
                                                  unsigned int* counter) {                              \
        gpumlp_sum<F>(a, n, square, out, partial, counter);                                             \
    }

GPUMLP_SUM_KERNELS(float, _f32)
GPUMLP_SUM_KERNELS(double, _f64)
