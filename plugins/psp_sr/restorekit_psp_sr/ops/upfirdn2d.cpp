// Python binding and argument checks for the upfirdn2d kernel (upfirdn2d.cu).
#include <torch/extension.h>

torch::Tensor upfirdn2d_cuda(const torch::Tensor& x, const torch::Tensor& f, int upx, int upy,
                             int downx, int downy, int px0, int px1, int py0, int py1, double gain);

static torch::Tensor upfirdn2d(const torch::Tensor& x, const torch::Tensor& f, int64_t upx,
                               int64_t upy, int64_t downx, int64_t downy, int64_t px0, int64_t px1,
                               int64_t py0, int64_t py1, double gain) {
  TORCH_CHECK(x.is_cuda() && f.is_cuda(), "upfirdn2d: x and f must be CUDA tensors");
  TORCH_CHECK(x.device() == f.device(), "upfirdn2d: x and f must be on the same device");
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "upfirdn2d: x must be a contiguous N×C×H×W tensor");
  TORCH_CHECK(f.dim() == 2 && f.is_contiguous(), "upfirdn2d: f must be a contiguous 2-D filter");
  const bool dbl = x.scalar_type() == at::kDouble;
  TORCH_CHECK(f.scalar_type() == (dbl ? at::kDouble : at::kFloat),
              "upfirdn2d: f must be float64 for float64 input, else float32");
  TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up/down must be >= 1");
  TORCH_CHECK(x.size(2) * upy < (int64_t(1) << 30) && x.size(3) * upx < (int64_t(1) << 30),
              "upfirdn2d: input too large");
  return upfirdn2d_cuda(x, f, int(upx), int(upy), int(downx), int(downy), int(px0), int(px1),
                        int(py0), int(py1), gain);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d, "upsample by zero insertion, pad, FIR filter, downsample");
}
