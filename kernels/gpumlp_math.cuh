// gpumlp device math: the lecture's scalar equations, one __device__ function each.
//
// Every function here has a NumPy twin in gpumlp/functions.py or gpumlp/optim.py, named beside it,
// and is checked against that twin twice: compiled for the GPU by NVRTC (tests/test_kernels_nvrtc.py)
// and compiled for the host by g++ with the CUDA keywords defined away (tests/test_kernels_host.py).
// So this header uses only what both compilers know: the C math functions (expf/exp, ...),
// comparisons and arithmetic. No intrinsics, no warp functions (those live in gpumlp_reduce.cuh).
//
// It is the preamble of the ElementwiseKernels (gpumlp/_kernels.py) and is included by the .cu files.
// CuPy puts `typedef float T;` before a preamble, so the templates here name their type F, not T.
#ifndef GPUMLP_MATH_CUH
#define GPUMLP_MATH_CUH

// ---- float/double overloads of the C math functions (gpumlp_math_*) ---------------------------
__device__ __forceinline__ float gpumlp_math_exp(float x) { return expf(x); }
__device__ __forceinline__ double gpumlp_math_exp(double x) { return exp(x); }
__device__ __forceinline__ float gpumlp_math_log(float x) { return logf(x); }
__device__ __forceinline__ double gpumlp_math_log(double x) { return log(x); }
__device__ __forceinline__ float gpumlp_math_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double gpumlp_math_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float gpumlp_math_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double gpumlp_math_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float gpumlp_math_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double gpumlp_math_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float gpumlp_math_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double gpumlp_math_abs(double x) { return fabs(x); }

// ---- activations: φ(z) and φ′ (from z and h = φ(z); each uses whichever is cheaper) -------------
// Constants as in functions.py: LEAKY_SLOPE, GELU_K = sqrt(2/pi), GELU_C.
#define GPUMLP_LEAKY_SLOPE 0.01
#define GPUMLP_GELU_K 0.7978845608028654
#define GPUMLP_GELU_C 0.044715

// relu: NumPy np.maximum(z, 0) (NaN passes through, as np.maximum); φ′(0) = 0, as PyTorch.
template <typename F> __device__ __forceinline__ F gpumlp_relu(F z) { return (z <= F(0)) ? F(0) : z; }
template <typename F> __device__ __forceinline__ F gpumlp_relu_grad(F z, F h) { return z > F(0) ? F(1) : F(0); }

// leaky_relu: np.where(z > 0, z, z * slope); φ′(0) = slope, as PyTorch.
template <typename F> __device__ __forceinline__ F gpumlp_leaky_relu(F z) {
    return z > F(0) ? z : z * F(GPUMLP_LEAKY_SLOPE);
}
template <typename F> __device__ __forceinline__ F gpumlp_leaky_relu_grad(F z, F h) {
    return z > F(0) ? F(1) : F(GPUMLP_LEAKY_SLOPE);
}

// sigmoid, stable: exp only ever sees −|z|.  φ′ = h (1 − h).
template <typename F> __device__ __forceinline__ F gpumlp_sigmoid(F z) {
    const F e = gpumlp_math_exp(-gpumlp_math_abs(z));
    return z >= F(0) ? F(1) / (F(1) + e) : e / (F(1) + e);
}
template <typename F> __device__ __forceinline__ F gpumlp_sigmoid_grad(F z, F h) { return h * (F(1) - h); }

// tanh.  φ′ = 1 − h².
template <typename F> __device__ __forceinline__ F gpumlp_tanh(F z) { return gpumlp_math_tanh(z); }
template <typename F> __device__ __forceinline__ F gpumlp_tanh_grad(F z, F h) { return F(1) - h * h; }

// gelu, tanh approximation (torch.nn.GELU(approximate="tanh")): ½ z (1 + tanh(k (z + c z³))).
template <typename F> __device__ __forceinline__ F gpumlp_gelu(F z) {
    const F t = gpumlp_math_tanh(F(GPUMLP_GELU_K) * (z + F(GPUMLP_GELU_C) * z * z * z));
    return F(0.5) * z * (F(1) + t);
}
template <typename F> __device__ __forceinline__ F gpumlp_gelu_grad(F z, F h) {
    const F t = gpumlp_math_tanh(F(GPUMLP_GELU_K) * (z + F(GPUMLP_GELU_C) * z * z * z));
    return F(0.5) * (F(1) + t)
         + F(0.5) * z * (F(1) - t * t) * F(GPUMLP_GELU_K) * (F(1) + F(3 * GPUMLP_GELU_C) * z * z);
}

// softplus log(1 + eᶻ) = max(z, 0) + log1p(e^−|z|): exact and finite for every z, no threshold.
// φ′ = sigmoid(z).
template <typename F> __device__ __forceinline__ F gpumlp_softplus(F z) {
    return (z > F(0) ? z : F(0)) + gpumlp_math_log1p(gpumlp_math_exp(-gpumlp_math_abs(z)));
}
template <typename F> __device__ __forceinline__ F gpumlp_softplus_grad(F z, F h) { return gpumlp_sigmoid(z); }

// identity.
template <typename F> __device__ __forceinline__ F gpumlp_identity(F z) { return z; }
template <typename F> __device__ __forceinline__ F gpumlp_identity_grad(F z, F h) { return F(1); }

// ---- losses, per element of one row o (q logits or outputs) -------------------------------------
// Cross-entropy with m = max_j o_j and s = Σ_j exp(o_j − m) of the row (functions.log_softmax):
//   l = −log softmax(o)_y = log s − (o_y − m);    ∂l/∂o_j = exp(o_j − m)/s − [j = y].
// (o_y − m first: it is exact when o_y is near m, even for logits of 1e4 where m's ulp is 1e-3.)
template <typename F> __device__ __forceinline__ F gpumlp_ce_loss(F o_label, F m, F s) {
    return gpumlp_math_log(s) - (o_label - m);
}
template <typename F> __device__ __forceinline__ F gpumlp_ce_grad(F o_j, F m, F s, bool is_label) {
    return gpumlp_math_exp(o_j - m) / s - (is_label ? F(1) : F(0));
}
// Squared: l = ½ Σ_j (o_j − y_j)²; ∂l/∂o_j = o_j − y_j (functions.squared_forward/backward).
template <typename F> __device__ __forceinline__ F gpumlp_squared_term(F o, F y) {
    const F r = o - y;
    return F(0.5) * r * r;
}
template <typename F> __device__ __forceinline__ F gpumlp_squared_grad(F o, F y) { return o - y; }
// Binary cross-entropy of a logistic output, y in [0, 1] (functions.binary_cross_entropy_forward/backward):
//   l = max(o, 0) − y o + log1p(e^−|o|)  (softplus(o) − y o: finite for logits of any size);
//   ∂l/∂o = σ(o) − y  (the stable sigmoid above).
template <typename F> __device__ __forceinline__ F gpumlp_bce_term(F o, F y) {
    return (o > F(0) ? o : F(0)) - y * o + gpumlp_math_log1p(gpumlp_math_exp(-gpumlp_math_abs(o)));
}
template <typename F> __device__ __forceinline__ F gpumlp_bce_grad(F o, F y) { return gpumlp_sigmoid(o) - y; }
// Poisson with an exponential output μ = e^o, half the deviance, y >= 0 (functions.poisson_forward/backward):
//   l = (e^o − y) − y (o − log y)  (0 log 0 = 0: the second term vanishes at y = 0);   ∂l/∂o = e^o − y.
template <typename F> __device__ __forceinline__ F gpumlp_poisson_term(F o, F y) {
    const F log_y = y > F(0) ? gpumlp_math_log(y) : F(0);
    return (gpumlp_math_exp(o) - y) - y * (o - log_y);
}
template <typename F> __device__ __forceinline__ F gpumlp_poisson_grad(F o, F y) { return gpumlp_math_exp(o) - y; }

// ---- update rules for one parameter θ with raw loss gradient g (gpumlp/optim.py) -----------------
// lam is λ for weights and 0 for biases (the caller decides by the element's index).
//
// SGD (optim.SGD, plain):  θ ← θ − η (g + λθ)
template <typename F> __device__ __forceinline__ F gpumlp_sgd(F theta, F g, F lr, F lam) {
    return theta - lr * (g + lam * theta);
}
// SGD with momentum μ (optim.SGD): d = g + λθ; v ← μ v + d; θ ← θ − η v, or with Nesterov
// θ ← θ − η (d + μ v). v starting at 0 gives PyTorch's v = d on the first step.
template <typename F>
__device__ __forceinline__ F gpumlp_sgd_momentum(F theta, F g, F* v, F lr, F lam, F mu, bool nesterov) {
    const F d = g + lam * theta;
    const F vn = mu * (*v) + d;
    *v = vn;
    return theta - lr * (nesterov ? d + mu * vn : vn);
}
// Adam (optim.Adam): L2 (coupled: g ← g + λθ) or, decoupled (AdamW), θ ← θ (1 − ηλ) first;
// m ← β1 m + (1 − β1) g; v ← β2 v + (1 − β2) g²; θ ← θ − (η/c1) m / (√v/√c2 + ε),
// c1 = 1 − β1ᵗ, c2 = 1 − β2ᵗ (bias corrections, computed by the update kernel from its step counter).
template <typename F>
__device__ __forceinline__ F gpumlp_adam(F theta, F g, F* m, F* v, F lr, F lam, F beta1, F beta2, F eps, F c1,
                                         F c2, bool decoupled) {
    if (decoupled) {
        theta = theta * (F(1) - lr * lam);
    } else {
        g = g + lam * theta;
    }
    const F mn = beta1 * (*m) + (F(1) - beta1) * g;
    const F vn = beta2 * (*v) + (F(1) - beta2) * g * g;
    *m = mn;
    *v = vn;
    return theta - (lr / c1) * mn / (gpumlp_math_sqrt(vn) / gpumlp_math_sqrt(c2) + eps);
}

#endif  // GPUMLP_MATH_CUH
