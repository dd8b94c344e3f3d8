// Fused optimizer updates over a flat parameter buffer: one kernel launch
// updates every parameter of the model (NumpyBackend.sgd_step, adam_step,
// rmsprop_step, formula for formula).
//
// Scalars arrive already rounded to the buffer's dtype, and the ones NumPy
// computes in Python floats first (1 - beta, lr / (1 - beta1^t), ...) are
// precomputed by the host the same way.  The host compiles this file with
// NVRTC and "--fmad=false", so each product and sum is rounded on its own as
// in NumPy and the GPU update matches the reference bit for bit except where
// a sum is reordered.  Grid-stride loops; no headers are included.

#define BP_GRID_STRIDE(i, n)                                                 \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;       \
       i < (n); i += (long long)blockDim.x * gridDim.x)

__device__ __forceinline__ float bp_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double bp_sqrt(double x) { return sqrt(x); }

// SGD as in PyTorch:
//   d = g + wd p;  v = mu v + d;  d = d + mu v (Nesterov) or v;  p -= lr d.
// vel may be null when use_momentum == 0.
template <typename T>
__device__ void bp_sgd(T* p, const T* g, T* vel, long long n, T lr,
                       T momentum, T weight_decay, int use_momentum,
                       int nesterov, int use_decay) {
  BP_GRID_STRIDE(i, n) {
    const T pi = p[i];
    T d = g[i];
    if (use_decay) d = d + weight_decay * pi;
    if (use_momentum) {
      const T vi = vel[i] * momentum + d;
      vel[i] = vi;
      d = nesterov ? d + momentum * vi : vi;
    }
    p[i] = pi - lr * d;
  }
}

// Adam / AdamW.  decay_mode: 0 none, 1 L2 (g += wd p), 2 decoupled
// (p *= 1 - lr wd).  With step_size = lr / (1 - beta1^t) and
// inv_sqrt_bias2 = 1 / sqrt(1 - beta2^t), in the reference's order:
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   p -= (m / (sqrt(v) inv_sqrt_bias2 + eps)) step_size
template <typename T>
__device__ void bp_adam(T* p, const T* g, T* m, T* v, long long n,
                        T step_size, T beta1, T one_minus_beta1, T beta2,
                        T one_minus_beta2, T inv_sqrt_bias2, T eps, T weight_decay,
                        T decay_factor, int decay_mode) {
  BP_GRID_STRIDE(i, n) {
    T pi = p[i];
    T gi = g[i];
    if (decay_mode == 2)
      pi = pi * decay_factor;
    else if (decay_mode == 1)
      gi = gi + weight_decay * pi;
    const T mi = m[i] * beta1 + gi * one_minus_beta1;
    const T vi = v[i] * beta2 + (gi * gi) * one_minus_beta2;
    m[i] = mi;
    v[i] = vi;
    const T denom = bp_sqrt(vi) * inv_sqrt_bias2 + eps;
    p[i] = pi - (mi / denom) * step_size;
  }
}

// RMSProp:  sq = alpha sq + (1 - alpha) g^2;  step = g / (sqrt(sq) + eps);
// with momentum: v = mu v + step, step = v;  p -= lr step.
// vel may be null when use_momentum == 0.
template <typename T>
__device__ void bp_rmsprop(T* p, const T* g, T* sq, T* vel, long long n, T lr,
                           T alpha, T one_minus_alpha, T eps, T momentum,
                           T weight_decay, int use_momentum, int use_decay) {
  BP_GRID_STRIDE(i, n) {
    const T pi = p[i];
    T gi = g[i];
    if (use_decay) gi = gi + weight_decay * pi;
    const T si = sq[i] * alpha + one_minus_alpha * (gi * gi);
    sq[i] = si;
    T step = gi / (bp_sqrt(si) + eps);
    if (use_momentum) {
      const T vi = vel[i] * momentum + step;
      vel[i] = vi;
      step = vi;
    }
    p[i] = pi - lr * step;
  }
}

extern "C" __global__ void sgd_step_f32(float* p, const float* g, float* vel,
                                        long long n, float lr, float momentum,
                                        float weight_decay, int use_momentum,
                                        int nesterov, int use_decay) {
  bp_sgd<float>(p, g, vel, n, lr, momentum, weight_decay, use_momentum,
                nesterov, use_decay);
}

extern "C" __global__ void sgd_step_f64(double* p, const double* g,
                                        double* vel, long long n, double lr,
                                        double momentum, double weight_decay,
                                        int use_momentum, int nesterov,
                                        int use_decay) {
  bp_sgd<double>(p, g, vel, n, lr, momentum, weight_decay, use_momentum,
                 nesterov, use_decay);
}

extern "C" __global__ void adam_step_f32(float* p, const float* g, float* m,
                                         float* v, long long n,
                                         float step_size, float beta1,
                                         float one_minus_beta1, float beta2,
                                         float one_minus_beta2, float inv_sqrt_bias2,
                                         float eps, float weight_decay,
                                         float decay_factor, int decay_mode) {
  bp_adam<float>(p, g, m, v, n, step_size, beta1, one_minus_beta1, beta2,
                 one_minus_beta2, inv_sqrt_bias2, eps, weight_decay, decay_factor,
                 decay_mode);
}

extern "C" __global__ void adam_step_f64(double* p, const double* g,
                                         double* m, double* v, long long n,
                                         double step_size, double beta1,
                                         double one_minus_beta1, double beta2,
                                         double one_minus_beta2, double inv_sqrt_bias2,
                                         double eps, double weight_decay,
                                         double decay_factor, int decay_mode) {
  bp_adam<double>(p, g, m, v, n, step_size, beta1, one_minus_beta1, beta2,
                  one_minus_beta2, inv_sqrt_bias2, eps, weight_decay, decay_factor,
                  decay_mode);
}

extern "C" __global__ void rmsprop_step_f32(float* p, const float* g,
                                            float* sq, float* vel, long long n,
                                            float lr, float alpha,
                                            float one_minus_alpha, float eps,
                                            float momentum, float weight_decay,
                                            int use_momentum, int use_decay) {
  bp_rmsprop<float>(p, g, sq, vel, n, lr, alpha, one_minus_alpha, eps,
                    momentum, weight_decay, use_momentum, use_decay);
}

extern "C" __global__ void rmsprop_step_f64(double* p, const double* g,
                                            double* sq, double* vel,
                                            long long n, double lr,
                                            double alpha,
                                            double one_minus_alpha, double eps,
                                            double momentum,
                                            double weight_decay,
                                            int use_momentum, int use_decay) {
  bp_rmsprop<double>(p, g, sq, vel, n, lr, alpha, one_minus_alpha, eps,
                     momentum, weight_decay, use_momentum, use_decay);
}
