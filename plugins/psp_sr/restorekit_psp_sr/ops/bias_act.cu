// Fused bias + leaky ReLU + gain + clamp, and its gradient mask. Written for restorekit.
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

namespace {

// Streaming multiprocessors of the current device (without ATen's CUDA context header, which
// drags in cuBLAS/cuSPARSE headers that a bare toolkit may lack).
inline int sm_count() {
  int dev = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms > 0 ? sms : 1;
}

template <typename scalar_t>
__global__ void bias_act_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ b,
                                scalar_t* __restrict__ y, int64_t n, int64_t step, int64_t nb,
                                float alpha, float gain, float clamp) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    acc_t v = static_cast<acc_t>(x[i]);
    if (b != nullptr) v += static_cast<acc_t>(b[(i / step) % nb]);
    v = v > acc_t(0) ? v : v * acc_t(alpha);
    v *= acc_t(gain);
    if (clamp >= 0.f) v = v > acc_t(clamp) ? acc_t(clamp) : (v < -acc_t(clamp) ? -acc_t(clamp) : v);
    y[i] = static_cast<scalar_t>(v);
  }
}

template <typename scalar_t>
__global__ void bias_act_grad_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y,
                                     scalar_t* __restrict__ dx, int64_t n, float alpha, float gain,
                                     float clamp) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const acc_t yv = static_cast<acc_t>(y[i]);
    acc_t g = static_cast<acc_t>(dy[i]);
    if (clamp >= 0.f && (yv >= acc_t(clamp) || yv <= -acc_t(clamp))) {
      g = acc_t(0);
    } else {
      // sign(y) = sign(gain) * sign(x + b) for alpha > 0; y == 0 takes the slope branch.
      g *= (yv * acc_t(gain) > acc_t(0)) ? acc_t(gain) : acc_t(gain) * acc_t(alpha);
    }
    dx[i] = static_cast<scalar_t>(g);
  }
}

inline int blocks_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  const int64_t cap = int64_t(sm_count()) * 32;
  return int(std::max<int64_t>(1, std::min(blocks, cap)));
}

}  // namespace

torch::Tensor bias_act_cuda(const torch::Tensor& x, const torch::Tensor& b, int64_t step,
                            double alpha, double gain, double clamp) {
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  auto y = torch::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return y;
  const int threads = 256;
  const int blocks = blocks_for(n, threads);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t nb = b.numel() > 0 ? b.size(0) : 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
                                  "bias_act_cuda", [&] {
    bias_act_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        x.data_ptr<scalar_t>(), b.numel() > 0 ? b.data_ptr<scalar_t>() : nullptr,
        y.data_ptr<scalar_t>(), n, step, nb, float(alpha), float(gain), float(clamp));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

torch::Tensor bias_act_grad_cuda(const torch::Tensor& dy, const torch::Tensor& y, double alpha,
                                 double gain, double clamp) {
  const c10::cuda::OptionalCUDAGuard guard(dy.device());
  auto dx = torch::empty_like(dy);
  const int64_t n = dy.numel();
  if (n == 0) return dx;
  const int threads = 256;
  const int blocks = blocks_for(n, threads);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, dy.scalar_type(),
                                  "bias_act_grad_cuda", [&] {
    bias_act_grad_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        dy.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), n,
        float(alpha), float(gain), float(clamp));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}
