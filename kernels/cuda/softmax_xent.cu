// Softmax cross-entropy, forward and backward in one pass per row.
//
// For logits z (n, c), targets q (n, c) and optional class weights w (c,)
// (NumpyBackend.softmax_cross_entropy):
//
//   log p_ic = (z_ic - max_c z_ic) - log sum_c exp(z_ic - max_c z_ic)
//   a_i      = sum_c w_c q_ic                  (written to row_weight[i])
//   l_i      = -sum_c w_c q_ic log p_ic        (written to row_loss[i])
//   dz_ic    = a_i p_ic - w_c q_ic             (unnormalised)
//
// The host finishes with D = sum_i a_i, loss = sum_i l_i / D and dz /= D,
// which gives exactly dz_ic = (a_i p_ic - w_c q_ic) / D.
//
// One warp handles one row (grid-stride over rows); lanes stride over the
// classes and combine with butterfly shuffles, so every lane ends with the
// same row max and sums and no shared memory is needed.  blockDim.x must be
// a multiple of 32.
//
// The *_labels_* variant takes integer labels y (n,) instead of q and builds
// the label-smoothed target on the fly:
//   q_ic = (c == y_i ? on_value : 0) + off_value,
// with on_value = 1 - eps and off_value = eps / n_classes.  A label outside
// [0, c) matches no class (callers validate labels first).
//
// The host compiles with NVRTC and "--fmad=false" so products and sums are
// rounded as NumPy rounds them.  No headers are included.

#define BP_FULL_MASK 0xffffffffu

__device__ __forceinline__ float bp_exp(float x) { return expf(x); }
__device__ __forceinline__ double bp_exp(double x) { return exp(x); }
__device__ __forceinline__ float bp_log(float x) { return logf(x); }
__device__ __forceinline__ double bp_log(double x) { return log(x); }
__device__ __forceinline__ float bp_neg_inf(float) {
  return __int_as_float(0xff800000);
}
__device__ __forceinline__ double bp_neg_inf(double) {
  return __longlong_as_double(0xfff0000000000000LL);
}

// max that propagates NaN, like numpy.max.
template <typename T>
__device__ __forceinline__ T bp_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

template <typename T>
__device__ __forceinline__ T bp_warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(BP_FULL_MASK, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ T bp_warp_max(T v) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v = bp_max(v, __shfl_xor_sync(BP_FULL_MASK, v, offset));
  return v;
}

// w_c q_ic for a dense target row or an integer label.
template <typename T, bool LABELS>
__device__ __forceinline__ T bp_weighted_target(const T* qr, long long label,
                                                const T* w, long long j,
                                                T on_value, T off_value) {
  const T t = LABELS ? (j == label ? on_value : T(0)) + off_value : qr[j];
  return w ? t * w[j] : t;
}

template <typename T, bool LABELS>
__device__ void bp_softmax_xent(const T* z, const T* q,
                                const long long* labels, const T* w, T* dz,
                                T* row_loss, T* row_weight, long long n,
                                long long c, T on_value, T off_value) {
  const int lane = threadIdx.x & 31;
  const long long first = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const long long stride = ((long long)gridDim.x * blockDim.x) >> 5;
  // Every lane of a warp walks the same rows, so the shuffles are convergent.
  for (long long r = first; r < n; r += stride) {
    const T* zr = z + r * c;
    const T* qr = LABELS ? q : q + r * c;
    T* dr = dz + r * c;
    const long long label = LABELS ? labels[r] : -1;

    T m = bp_neg_inf(T(0));
    for (long long j = lane; j < c; j += 32) m = bp_max(m, zr[j]);
    m = bp_warp_max(m);

    T s = T(0), a = T(0);
    for (long long j = lane; j < c; j += 32) {
      s += bp_exp(zr[j] - m);
      a += bp_weighted_target<T, LABELS>(qr, label, w, j, on_value, off_value);
    }
    s = bp_warp_sum(s);
    a = bp_warp_sum(a);
    const T lse = bp_log(s);

    T l = T(0);
    for (long long j = lane; j < c; j += 32) {
      const T logp = (zr[j] - m) - lse;
      const T p = bp_exp(logp);
      const T wq = bp_weighted_target<T, LABELS>(qr, label, w, j, on_value, off_value);
      dr[j] = a * p - wq;
      l += wq * logp;
    }
    l = bp_warp_sum(l);
    if (lane == 0) {
      row_loss[r] = -l;
      row_weight[r] = a;
    }
  }
}

extern "C" __global__ void softmax_xent_f32(const float* z, const float* q,
                                            const float* w, float* dz,
                                            float* row_loss, float* row_weight,
                                            long long n, long long c) {
  bp_softmax_xent<float, false>(z, q, nullptr, w, dz, row_loss, row_weight, n,
                                c, 0.0f, 0.0f);
}

extern "C" __global__ void softmax_xent_f64(const double* z, const double* q,
                                            const double* w, double* dz,
                                            double* row_loss,
                                            double* row_weight, long long n,
                                            long long c) {
  bp_softmax_xent<double, false>(z, q, nullptr, w, dz, row_loss, row_weight,
                                 n, c, 0.0, 0.0);
}

extern "C" __global__ void softmax_xent_labels_f32(
    const float* z, const long long* labels, const float* w, float* dz,
    float* row_loss, float* row_weight, long long n, long long c,
    float on_value, float off_value) {
  bp_softmax_xent<float, true>(z, nullptr, labels, w, dz, row_loss,
                               row_weight, n, c, on_value, off_value);
}

extern "C" __global__ void softmax_xent_labels_f64(
    const double* z, const long long* labels, const double* w, double* dz,
    double* row_loss, double* row_weight, long long n, long long c,
    double on_value, double off_value) {
  bp_softmax_xent<double, true>(z, nullptr, labels, w, dz, row_loss,
                                row_weight, n, c, on_value, off_value);
}
