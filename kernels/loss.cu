// Fused losses: for each row of the outputs o (B, q), the loss term and ∂L/∂o in one pass, and the
// batch loss L = Σ_i scale_i l_i reduced in the same launch (gpumlp_grid_sum). NumPy twins:
// functions.<loss>_forward/backward for cross_entropy, squared, binary_cross_entropy and poisson.
//
// scale_i = 1/B (the mean), or w_i / Σw with per-example weights w (functions._batch_weights);
// Σw is computed on the device beforehand (gpumlp_sum_*) and passed by pointer, so nothing is read
// back to the host. A batch whose weights are all zero (Σw = 0) divides by 1 instead, as NumPy does:
// scale 0, so L = 0 and ∂L/∂o = 0, not 0/0 = NaN. Launch: blocks of 256 threads (8 warps), one
// warp per row, lanes over the q columns, a grid-stride loop over rows; partial holds gridDim.x
// values, counter starts at zero.
#include "gpumlp_math.cuh"
#include "gpumlp_reduce.cuh"

template <typename F>
__device__ __forceinline__ F gpumlp_row_scale(const F* w, const F* wsum, long long row, int B) {
    if (!w) return F(1) / F(B);
    const F total = *wsum;
    return w[row] / (total > F(0) ? total : F(1));
}

// Cross-entropy with integer labels y (int64): per row the max m, s = Σ exp(o − m), then
// ∂L/∂o = (softmax − onehot)·scale and l = log s − (o_y − m).
template <typename F>
__device__ void gpumlp_cross_entropy(const F* __restrict__ o, const long long* __restrict__ y,
                                     const F* __restrict__ w, const F* __restrict__ wsum, F* __restrict__ dout,
                                     F* loss, F* partial, unsigned int* counter, int B, int q) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    F acc = F(0);  // lane 0: Σ scale_i l_i over this warp's rows
    for (long long row = (long long)blockIdx.x * warps + (threadIdx.x >> 5); row < B;
         row += (long long)gridDim.x * warps) {
        const F* orow = o + row * q;
        F* drow = dout + row * q;
        F m = orow[0];
        for (int j = lane; j < q; j += 32) m = orow[j] > m ? orow[j] : m;
        m = gpumlp_warp_max(m);
        F s = F(0);
        for (int j = lane; j < q; j += 32) s += gpumlp_math_exp(orow[j] - m);
        s = gpumlp_warp_sum(s);
        const long long label = y[row];
        const F scale = gpumlp_row_scale(w, wsum, row, B);
        for (int j = lane; j < q; j += 32) drow[j] = gpumlp_ce_grad(orow[j], m, s, j == label) * scale;
        if (lane == 0) acc += scale * gpumlp_ce_loss(orow[label], m, s);
    }
    gpumlp_grid_sum(gpumlp_block_sum(acc), partial, counter, loss);
}

// The losses whose terms are per element, with targets y (B, q): l = Σ_j term(o_j, y_j) and
// ∂L/∂o_j = grad(o_j, y_j)·scale. Each is a tag type naming its two functions of gpumlp_math.cuh.
struct gpumlp_squared_loss {  // ½ (o − y)², o − y
    template <typename F> static __device__ __forceinline__ F term(F o, F y) { return gpumlp_squared_term(o, y); }
    template <typename F> static __device__ __forceinline__ F grad(F o, F y) { return gpumlp_squared_grad(o, y); }
};
struct gpumlp_bce_loss {  // logistic output: softplus(o) − y o, σ(o) − y
    template <typename F> static __device__ __forceinline__ F term(F o, F y) { return gpumlp_bce_term(o, y); }
    template <typename F> static __device__ __forceinline__ F grad(F o, F y) { return gpumlp_bce_grad(o, y); }
};
struct gpumlp_poisson_loss {  // exponential output: half the Poisson deviance, e^o − y
    template <typename F> static __device__ __forceinline__ F term(F o, F y) { return gpumlp_poisson_term(o, y); }
    template <typename F> static __device__ __forceinline__ F grad(F o, F y) { return gpumlp_poisson_grad(o, y); }
};

template <typename F, typename Loss>
__device__ void gpumlp_pointwise_loss(const F* __restrict__ o, const F* __restrict__ y, const F* __restrict__ w,
                                      const F* __restrict__ wsum, F* __restrict__ dout, F* loss, F* partial,
                                      unsigned int* counter, int B, int q) {
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    F acc = F(0);
    for (long long row = (long long)blockIdx.x * warps + (threadIdx.x >> 5); row < B;
         row += (long long)gridDim.x * warps) {
        const F* orow = o + row * q;
        const F* yrow = y + row * q;
        F* drow = dout + row * q;
        const F scale = gpumlp_row_scale(w, wsum, row, B);
        F l = F(0);
        for (int j = lane; j < q; j += 32) {
            drow[j] = Loss::grad(orow[j], yrow[j]) * scale;
            l += Loss::term(orow[j], yrow[j]);
        }
        l = gpumlp_warp_sum(l);
        if (lane == 0) acc += scale * l;
    }
    gpumlp_grid_sum(gpumlp_block_sum(acc), partial, counter, loss);
}

#define GPUMLP_LOSS_KERNELS(F, SUFFIX)                                                                  \
    extern "C" __global__ void gpumlp_cross_entropy##SUFFIX(                                             \
        const F* o, const long long* y, const F* w, const F* wsum, F* dout, F* loss, F* partial,         \
        unsigned int* counter, int B, int q) {                                                           \
        gpumlp_cross_entropy<F>(o, y, w, wsum, dout, loss, partial, counter, B, q);                     \
    }                                                                                                    \
    extern "C" __global__ void gpumlp_squared##SUFFIX(const F* o, const F* y, const F* w, const F* wsum, \
                                                      F* dout, F* loss, F* partial, unsigned int* counter, \
                                                      int B, int q) {                                    \
        gpumlp_pointwise_loss<F, gpumlp_squared_loss>(o, y, w, wsum, dout, loss, partial, counter, B, q); \
    }                                                                                                    \
    extern "C" __global__ void gpumlp_binary_cross_entropy##SUFFIX(                                      \
        const F* o, const F* y, const F* w, const F* wsum, F* dout, F* loss, F* partial,                 \
        unsigned int* counter, int B, int q) {                                                           \
        gpumlp_pointwise_loss<F, gpumlp_bce_loss>(o, y, w, wsum, dout, loss, partial, counter, B, q);     \
    }                                                                                                    \
    extern "C" __global__ void gpumlp_poisson##SUFFIX(const F* o, const F* y, const F* w, const F* wsum, \
                                                      F* dout, F* loss, F* partial, unsigned int* counter, \
                                                      int B, int q) {                                    \
        gpumlp_pointwise_loss<F, gpumlp_poisson_loss>(o, y, w, wsum, dout, loss, partial, counter, B, q); \
    }

GPUMLP_LOSS_KERNELS(float, _f32)
GPUMLP_LOSS_KERNELS(double, _f64)
