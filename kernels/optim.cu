// One launch updates the whole flat parameter buffer θ = [W1, ..., b1, ...] (gpumlp/optim.py):
// its first n_decay elements are weights and get λ, the rest are biases and do not.
// Grid-stride loop, any launch shape. NumPy twins: optim.SGD.update and optim.Adam.update.
#include "gpumlp_math.cuh"

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

template <typename F>
__device__ void gpumlp_adam_update(F* __restrict__ theta, const F* __restrict__ grad, F* __restrict__ m,
                                   F* __restrict__ v, long long n, long long n_decay, F lr, F lam, F beta1,
                                   F beta2, F eps, F c1, F c2, int decoupled) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const F lam_i = i < n_decay ? lam : F(0);
        theta[i] = gpumlp_adam(theta[i], grad[i], m + i, v + i, lr, lam_i, beta1, beta2, eps, c1, c2, decoupled != 0);
    }
}

#define GPUMLP_OPTIM_KERNELS(F, SUFFIX)                                                                  \
    extern "C" __global__ void gpumlp_sgd_update##SUFFIX(F* theta, const F* grad, F* velocity, long long n, \
                                                         long long n_decay, F lr, F lam, F mu,           \
                                                         int nesterov) {                                 \
        gpumlp_sgd_update<F>(theta, grad, velocity, n, n_decay, lr, lam, mu, nesterov);                  \
    }                                                                                                    \
    extern "C" __global__ void gpumlp_adam_update##SUFFIX(F* theta, const F* grad, F* m, F* v, long long n, \
                                                          long long n_decay, F lr, F lam, F beta1,       \
                                                          F beta2, F eps, F c1, F c2, int decoupled) {   \
        gpumlp_adam_update<F>(theta, grad, m, v, n, n_decay, lr, lam, beta1, beta2, eps, c1, c2, decoupled); \
    }

GPUMLP_OPTIM_KERNELS(float, _f32)
GPUMLP_OPTIM_KERNELS(double, _f64)
