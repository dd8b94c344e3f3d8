// Pointwise activations for the CuPy backend: bias-add + activation forward
// and activation backward, one fused pass over a row-major buffer.
//
// Each kernel is the fused form of an activation layer's own f / dz code
// (bpnet/layers/activations.py), expression for expression.  The host
// compiles this file with NVRTC and "--fmad=false", so every +, -, *, / is
// rounded on its own exactly as NumPy rounds it; only the library functions
// (exp, expm1, tanh) may differ from NumPy by an ulp or two.
//
// The activation codes ACT_IDENTITY, ACT_RELU, ... are not written here: they
// come from the one table in kernels/activation_codes.py, passed on the
// compiler command line as -DACT_RELU=1 ... (cuda_defines() there).
//
// No headers are included: NVRTC compiles this file as it is.

#if !defined(ACT_IDENTITY) || !defined(ACT_RELU) || !defined(ACT_LEAKY_RELU) || \
    !defined(ACT_ELU) || !defined(ACT_SIGMOID) || !defined(ACT_TANH)
#error "compile with the -DACT_<NAME>=<code> definitions of kernels/activation_codes.py"
#endif

// Grid-stride loop over [0, n) with 64-bit indices.
#define BP_GRID_STRIDE(i, n)                                                 \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;       \
       i < (n); i += (long long)blockDim.x * gridDim.x)

__device__ __forceinline__ float bp_exp(float x) { return expf(x); }
__device__ __forceinline__ double bp_exp(double x) { return exp(x); }
__device__ __forceinline__ float bp_expm1(float x) { return expm1f(x); }
__device__ __forceinline__ double bp_expm1(double x) { return expm1(x); }
__device__ __forceinline__ float bp_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double bp_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float bp_fabs(float x) { return fabsf(x); }
__device__ __forceinline__ double bp_fabs(double x) { return fabs(x); }

// y = f(z).  K is a compile-time activation code, so the switch folds away.
template <typename T, int K>
__device__ __forceinline__ T bp_act(T z, T alpha) {
  switch (K) {
    case ACT_RELU:  // maximum(z, 0); a NaN passes through as in NumPy
      return z < T(0) ? T(0) : z;
    case ACT_LEAKY_RELU:
      return z > T(0) ? z : alpha * z;
    case ACT_ELU:  // for z <= 0 (or NaN), minimum(z, 0) == z
      return z > T(0) ? z : alpha * bp_expm1(z);
    case ACT_SIGMOID: {  // exp never overflows: e = exp(-|z|) <= 1
      const T e = bp_exp(-bp_fabs(z));
      return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
    }
    case ACT_TANH:
      return bp_tanh(z);
    default:
      return z;
  }
}

// dz = dy * f'(z), with f'(z) written in terms of the output y = f(z).
template <typename T, int K>
__device__ __forceinline__ T bp_act_grad(T y, T dy, T alpha) {
  switch (K) {
    case ACT_RELU:
      return dy * (y > T(0) ? T(1) : T(0));
    case ACT_LEAKY_RELU:
      return y > T(0) ? dy : alpha * dy;
    case ACT_ELU:  // f'(z) = alpha e^z = y + alpha for z <= 0
      return y > T(0) ? dy : dy * (y + alpha);
    case ACT_SIGMOID:
      return dy * y * (T(1) - y);
    case ACT_TANH:
      return dy * (T(1) - y * y);
    default:
      return dy;
  }
}

// y[i] = f(z[i]); y may alias z.
template <typename T, int K>
__device__ void bp_act_forward_loop(const T* z, T* y, long long n, T alpha) {
  BP_GRID_STRIDE(i, n) { y[i] = bp_act<T, K>(z[i], alpha); }
}

// z[r, c] = f(z[r, c] + b[c]) in place, z of shape (n / m, m) row-major.
template <typename T, int K>
__device__ void bp_bias_act_loop(T* z, const T* b, long long n, long long m,
                                 T alpha) {
  BP_GRID_STRIDE(i, n) { z[i] = bp_act<T, K>(z[i] + b[i % m], alpha); }
}

// dz[i] = dy[i] * f'(z[i]) from y[i]; dz may alias y or dy.
template <typename T, int K>
__device__ void bp_act_backward_loop(const T* y, const T* dy, T* dz,
                                     long long n, T alpha) {
  BP_GRID_STRIDE(i, n) { dz[i] = bp_act_grad<T, K>(y[i], dy[i], alpha); }
}

// Turn the run-time code into a compile-time one (the code is the same for
// every thread, so this branch never diverges).
#define BP_DISPATCH(kind, LOOP, T, ...)                                       \
  switch (kind) {                                                             \
    case ACT_RELU: LOOP<T, ACT_RELU>(__VA_ARGS__); break;                     \
    case ACT_LEAKY_RELU: LOOP<T, ACT_LEAKY_RELU>(__VA_ARGS__); break;         \
    case ACT_ELU: LOOP<T, ACT_ELU>(__VA_ARGS__); break;                       \
    case ACT_SIGMOID: LOOP<T, ACT_SIGMOID>(__VA_ARGS__); break;               \
    case ACT_TANH: LOOP<T, ACT_TANH>(__VA_ARGS__); break;                     \
    default: LOOP<T, ACT_IDENTITY>(__VA_ARGS__); break;                       \
  }

extern "C" __global__ void act_forward_f32(const float* z, float* y,
                                           long long n, int kind,
                                           float alpha) {
  BP_DISPATCH(kind, bp_act_forward_loop, float, z, y, n, alpha)
}

extern "C" __global__ void act_forward_f64(const double* z, double* y,
                                           long long n, int kind,
                                           double alpha) {
  BP_DISPATCH(kind, bp_act_forward_loop, double, z, y, n, alpha)
}

extern "C" __global__ void bias_act_forward_f32(float* z, const float* b,
                                                long long n, long long m,
                                                int kind, float alpha) {
  BP_DISPATCH(kind, bp_bias_act_loop, float, z, b, n, m, alpha)
}

extern "C" __global__ void bias_act_forward_f64(double* z, const double* b,
                                                long long n, long long m,
                                                int kind, double alpha) {
  BP_DISPATCH(kind, bp_bias_act_loop, double, z, b, n, m, alpha)
}

extern "C" __global__ void act_backward_f32(const float* y, const float* dy,
                                            float* dz, long long n, int kind,
                                            float alpha) {
  BP_DISPATCH(kind, bp_act_backward_loop, float, y, dy, dz, n, alpha)
}

extern "C" __global__ void act_backward_f64(const double* y, const double* dy,
                                            double* dz, long long n, int kind,
                                            double alpha) {
  BP_DISPATCH(kind, bp_act_backward_loop, double, y, dy, dz, n, alpha)
}
