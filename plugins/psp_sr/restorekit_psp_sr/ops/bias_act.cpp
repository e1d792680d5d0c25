// Python binding and argument checks for the fused bias + activation kernels (bias_act.cu).
#include <torch/extension.h>

torch::Tensor bias_act_cuda(const torch::Tensor& x, const torch::Tensor& b, int64_t step,
                            double alpha, double gain, double clamp);
torch::Tensor bias_act_grad_cuda(const torch::Tensor& dy, const torch::Tensor& y, double alpha,
                                 double gain, double clamp);

static torch::Tensor bias_act(const torch::Tensor& x, const torch::Tensor& b, int64_t dim,
                              double alpha, double gain, double clamp) {
  TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
  TORCH_CHECK(x.is_contiguous(), "bias_act: x must be contiguous");
  TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim out of range");
  TORCH_CHECK(x.numel() < (int64_t(1) << 62), "bias_act: tensor too large");
  int64_t step = 1;
  for (int64_t i = dim + 1; i < x.dim(); ++i) step *= x.size(i);
  if (b.numel() > 0) {
    TORCH_CHECK(b.is_cuda() && b.device() == x.device(), "bias_act: b must be on x's device");
    TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim), "bias_act: b must have x.shape[dim] elements");
    TORCH_CHECK(b.scalar_type() == x.scalar_type(), "bias_act: b must have x's dtype");
    TORCH_CHECK(b.is_contiguous(), "bias_act: b must be contiguous");
  }
  return bias_act_cuda(x, b, step, alpha, gain, clamp);
}

static torch::Tensor bias_act_grad(const torch::Tensor& dy, const torch::Tensor& y, double alpha,
                                   double gain, double clamp) {
  TORCH_CHECK(dy.is_cuda() && y.is_cuda(), "bias_act_grad: tensors must be on CUDA");
  TORCH_CHECK(dy.is_contiguous() && y.is_contiguous(), "bias_act_grad: tensors must be contiguous");
  TORCH_CHECK(dy.sizes() == y.sizes(), "bias_act_grad: dy and y must have the same shape");
  TORCH_CHECK(dy.scalar_type() == y.scalar_type(), "bias_act_grad: dy and y must have the same dtype");
  return bias_act_grad_cuda(dy, y, alpha, gain, clamp);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bias_act", &bias_act, "clamp(gain * leaky_relu(x + b, alpha)); clamp < 0 disables it");
  m.def("bias_act_grad", &bias_act_grad, "dy * d/dz of bias_act, read off the output y");
}
