// One launch updates the whole flat parameter buffer θ = [W1, ..., b1, ...] (gpumlp/optim.py):
// its first n_decay elements are weights and get λ, the rest are biases and do not.
// Grid-stride loop, any launch shape. NumPy twins: NumpyOps.sgd_update and NumpyOps.adam_update
// (gpumlp/_numpy_ops.py), both held to the reference Ops.sgd_update / Ops.adam_update (gpumlp/ops.py).
#include "gpumlp_math.cuh"
#include "gpumlp_reduce.cuh"

// velocity == nullptr: plain SGD; otherwise momentum mu (with Nesterov when nesterov != 0).
template <typename F>
__device__ void gpumlp_sgd_update(F* __restrict__ theta, const F* __restrict__ grad, F* __restrict__ velocity,
                                  long long n, long long n_decay, F lr, F lam, F mu, int nesterov) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const F lam_i = i < n_decay ? lam : F(0);
        theta[i] = velocity ? gpumlp_sgd_momentum(theta[i], grad[i], velocity + i, lr, lam_i, mu, nesterov != 0)
                            : gpumlp_sgd(theta[i], grad[i], lr, lam_i);
    }
}

// Adam's step counter lives on the device: *step holds the steps taken so far. Thread 0 of each block
// reads t = *step + 1 and computes the bias corrections c1 = 1 − β1ᵗ, c2 = 1 − β2ᵗ once for its block,
// in double (β1, β2 come in as doubles for that; the moment updates use them in F, as the host casts
// them), and hands them to the block's threads through shared memory: two double pow per block, not per
// thread (cards with 1/32–1/64 double rate would spend more on them than on the update's memory traffic).
// The formula is the NumPy twin's (ops.adam_corrections: 1 − β**t in double, then cast to F): bit for
// bit the same values under host emulation (the same libm pow as Python's); CUDA's double pow is within
// 2 ulp (CUDA Math API), so on a GPU c1, c2 may differ in their last bits (≲ 1e-15 relative, float64
// only in practice), inside the GPU tests' tolerances. The last block to finish stores t
// (gpumlp_store_after_grid); every block has read *step before it counts itself done. So a step reads no
// host value that changes from one step to the next, and the launch can be captured in a CUDA graph and
// replayed.
template <typename F>
__device__ void gpumlp_adam_update(F* __restrict__ theta, const F* __restrict__ grad, F* __restrict__ m,
                                   F* __restrict__ v, long long* step, long long n, long long n_decay, F lr, F lam,
                                   double beta1, double beta2, F eps, int decoupled, unsigned int* blocks_done) {
    __shared__ F corrections[2];  // c1, c2 of this launch's step, for the whole block
    __shared__ long long next_step;
    if (threadIdx.x == 0) {
        const long long t = *step + 1;
        next_step = t;
        corrections[0] = F(1.0 - pow(beta1, (double)t));
        corrections[1] = F(1.0 - pow(beta2, (double)t));
    }
    __syncthreads();
    const F c1 = corrections[0], c2 = corrections[1];
    const F b1 = F(beta1), b2 = F(beta2);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const F lam_i = i < n_decay ? lam : F(0);
        theta[i] = gpumlp_adam(theta[i], grad[i], m + i, v + i, lr, lam_i, b1, b2, eps, c1, c2, decoupled != 0);
    }
    gpumlp_store_after_grid(step, next_step, blocks_done);
}

#define GPUMLP_OPTIM_KERNELS(F, SUFFIX)                                                                  \
    extern "C" __global__ void gpumlp_sgd_update##SUFFIX(F* theta, const F* grad, F* velocity, long long n, \
                                                         long long n_decay, F lr, F lam, F mu,           \
                                                         int nesterov) {                                 \
        gpumlp_sgd_update<F>(theta, grad, velocity, n, n_decay, lr, lam, mu, nesterov);                  \
    }                                                                                                    \
    extern "C" __global__ void gpumlp_adam_update##SUFFIX(F* theta, const F* grad, F* m, F* v, long long* step, \
                                                          long long n, long long n_decay, F lr, F lam,   \
                                                          double beta1, double beta2, F eps, int decoupled, \
                                                          unsigned int* blocks_done) {                   \
        gpumlp_adam_update<F>(theta, grad, m, v, step, n, n_decay, lr, lam, beta1, beta2, eps, decoupled,  \
                              blocks_done);                                                              \
    }

GPUMLP_OPTIM_KERNELS(float, _f32)
GPUMLP_OPTIM_KERNELS(double, _f64)
