// Whole-buffer reductions for gradient clipping and diagnostics
// (NumpyBackend.sum_squares and all_finite).
//
// sum_squares_*: each block writes the float64 sum of x^2 over its share of
// a grid-stride loop to partial[blockIdx.x]; the host sums the partials
// (gridDim.x of them).  Accumulation is in double for both dtypes, as in the
// reference.  blockDim.x must be a multiple of 32 and at most 1024.
//
// any_nonfinite_*: sets *flag = 1 if some element is NaN or +-Inf (the host
// zeroes the flag first; every writer stores the same value, so the race is
// harmless).  No headers are included: NVRTC compiles this file as it is.

#define BP_FULL_MASK 0xffffffffu

#define BP_GRID_STRIDE(i, n)                                                 \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;       \
       i < (n); i += (long long)blockDim.x * gridDim.x)

__device__ __forceinline__ double bp_warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(BP_FULL_MASK, v, offset);
  return v;
}

// Sum over the block; the result is valid in thread 0.
__device__ __forceinline__ double bp_block_sum(double v) {
  __shared__ double warp_sums[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int n_warps = (blockDim.x + 31) >> 5;
  v = bp_warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < n_warps ? warp_sums[lane] : 0.0;
    v = bp_warp_sum(v);
  }
  return v;
}

// |x| <= largest finite value is false exactly for NaN and +-Inf.
__device__ __forceinline__ bool bp_finite(float x) {
  return fabsf(x) <= 3.40282346638528859811704183484516925e+38f;
}
__device__ __forceinline__ bool bp_finite(double x) {
  return fabs(x) <= 1.79769313486231570814527423731704357e+308;
}

template <typename T>
__device__ void bp_sum_squares(const T* x, double* partial, long long n) {
  double acc = 0.0;
  BP_GRID_STRIDE(i, n) {
    const double d = (double)x[i];
    acc += d * d;
  }
  acc = bp_block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

template <typename T>
__device__ void bp_any_nonfinite(const T* x, int* flag, long long n) {
  bool bad = false;
  BP_GRID_STRIDE(i, n) { bad |= !bp_finite(x[i]); }
  if (bad) *flag = 1;
}

extern "C" __global__ void sum_squares_f32(const float* x, double* partial,
                                           long long n) {
  bp_sum_squares<float>(x, partial, n);
}

extern "C" __global__ void sum_squares_f64(const double* x, double* partial,
                                           long long n) {
  bp_sum_squares<double>(x, partial, n);
}

extern "C" __global__ void any_nonfinite_f32(const float* x, int* flag,
                                             long long n) {
  bp_any_nonfinite<float>(x, flag, n);
}

extern "C" __global__ void any_nonfinite_f64(const double* x, int* flag,
                                             long long n) {
  bp_any_nonfinite<double>(x, flag, n);
}
