// torch.ops.flash4.fwd / torch.ops.flash4.bwd: flash4's C ABI (flash4.h) on torch tensors.
//
// This file uses flash4's public header only. Each op allocates its outputs, describes
// every tensor to flash4 as a view (data pointer, shape, strides in elements), and calls
// flash4_forward / flash4_backward: CUDA tensors on the current torch stream of their
// device (bf16 / fp16, the CUDA backends), CPU tensors on the float32 CPU kernels (float64
// tensors: the float64 reference, used for gradcheck). A failed call raises with flash4_last_error()'s message.
// Autograd, fake (meta) kernels and the user-facing function live in flash4/__init__.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <flash4/flash4.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

flash4_dtype dtype_of(const Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kBFloat16: return FLASH4_BF16;
    case at::kHalf: return FLASH4_F16;
    case at::kFloat: return FLASH4_F32;
    case at::kDouble: return FLASH4_F64;
    default: TORCH_CHECK(false, "flash4: ", name, " has dtype ", t.scalar_type(), " (bf16, fp16, fp32 or fp64 expected)");
  }
}

// The ABI needs a contiguous last dimension; the CUDA kernels also want 16-byte aligned
// rows (data and every outer stride). A tensor that already satisfies both is passed as
// it is (any BSHD / BHSD strides); otherwise it is copied once.
Tensor rows_usable(const Tensor& t) {
  if (t.dim() == 0 || t.numel() == 0) return t.contiguous();
  bool ok = t.stride(-1) == 1 || t.size(-1) == 1;
  if (t.is_cuda()) {
    const int64_t align = int64_t(16 / t.element_size());
    ok = ok && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
    for (int64_t d = 0; ok && d + 1 < t.dim(); ++d) ok = t.size(d) == 1 || t.stride(d) % align == 0;
  }
  return ok ? t : t.contiguous();
}

flash4_tensor view(const Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() <= FLASH4_MAX_RANK, "flash4: ", name, " has rank ", t.dim(), " (at most 4)");
  flash4_tensor v{};
  v.data = t.data_ptr();
  v.dtype = dtype_of(t, name);
  v.rank = int(t.dim());
  for (int64_t d = 0; d < t.dim(); ++d) {
    v.shape[d] = t.size(d);
    v.stride[d] = t.size(d) == 1 && d + 1 == t.dim() ? 1 : t.stride(d);
  }
  return v;
}

const int32_t* int32_pointer(const OptTensor& t, const Tensor& q, const char* name) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kInt, "flash4: ", name, " must be int32, got ", t->scalar_type());
  TORCH_CHECK(t->device() == q.device(), "flash4: ", name, " is on ", t->device(), ", q on ", q.device());
  TORCH_CHECK(t->is_contiguous(), "flash4: ", name, " must be contiguous");
  return t->data_ptr<int32_t>();
}

void check_same_device(const Tensor& t, const Tensor& q, const char* name) {
  TORCH_CHECK(t.device() == q.device(), "flash4: ", name, " is on ", t.device(), ", q on ", q.device());
}

// Fields the forward and the backward share: options and the varlen / seqused_k view.
struct Common {
  flash4_device device;
  void* stream;
  flash4_options options;
  flash4_varlen varlen;
  bool packed;
};

Common common(const Tensor& q, const OptTensor& sink, const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k,
              const OptTensor& seqused_k, int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale,
              bool causal, int64_t window_left, int64_t window_right, double softcap) {
  Common c{};
  c.device = q.is_cuda() ? FLASH4_CUDA : FLASH4_CPU;
  TORCH_CHECK(q.is_cuda() || q.is_cpu(), "flash4: tensors must be on a CUDA device or the CPU, q is on ", q.device());
  c.stream = q.is_cuda() ? static_cast<void*>(c10::cuda::getCurrentCUDAStream(q.device().index()).stream()) : nullptr;
  c.options.softmax_scale = float(softmax_scale);
  c.options.causal = causal ? 1 : 0;
  c.options.window_left = int(window_left);
  c.options.window_right = int(window_right);
  c.options.softcap = float(softcap);
  if (sink.has_value()) {
    TORCH_CHECK(sink->scalar_type() == at::kFloat, "flash4: sink must be fp32 [Hq], got ", sink->scalar_type());
    TORCH_CHECK(sink->dim() == 1 && sink->is_contiguous(), "flash4: sink must be a contiguous [Hq] tensor");
    check_same_device(*sink, q, "sink");
    c.options.sink = sink->data_ptr<float>();
  }
  c.packed = cu_seqlens_q.has_value();
  c.varlen.cu_seqlens_q = int32_pointer(cu_seqlens_q, q, "cu_seqlens_q");
  c.varlen.cu_seqlens_k = int32_pointer(cu_seqlens_k, q, "cu_seqlens_k");
  c.varlen.seqused_k = int32_pointer(seqused_k, q, "seqused_k");
  if (c.packed) c.varlen.batch = int(cu_seqlens_q->numel() - 1);
  else if (seqused_k.has_value()) c.varlen.batch = int(seqused_k->numel());
  c.varlen.max_seqlen_q = int(max_seqlen_q);
  c.varlen.max_seqlen_k = int(max_seqlen_k);
  return c;
}

[[noreturn]] void fail(const char* entry_point, flash4_status status) {
  TORCH_CHECK(false, entry_point, " failed (status ", int(status), "): ", flash4_last_error());
}

// q [B, Sq, Hq, Dqk] or packed [Tq, Hq, Dqk]; k / v [B, Sk, Hkv, D] or packed [Tk, Hkv, D]
// or paged [pages, page_size, Hkv, D] (page_table [B, max_pages], seqused_k required).
// Returns out (like q, head dim Dv) and lse (fp32 [B, Hq, Sq] or packed [Hq, Tq]).
// `deterministic` is not used here: it rides with the forward's arguments so that the
// autograd formula (flash4/__init__.py) can hand it to bwd.
std::tuple<Tensor, Tensor> forward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const OptTensor& sink,
                                   const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k,
                                   const OptTensor& seqused_k, const OptTensor& page_table, int64_t max_seqlen_q,
                                   int64_t max_seqlen_k, double softmax_scale, bool causal, int64_t window_left,
                                   int64_t window_right, double softcap, bool deterministic) {
  (void)deterministic;  // the backward's mode, kept with the forward's arguments for autograd
  check_same_device(k_in, q_in, "k");
  check_same_device(v_in, q_in, "v");
  std::optional<c10::cuda::CUDAGuard> guard;
  if (q_in.is_cuda()) guard.emplace(q_in.device());
  const Tensor q = rows_usable(q_in), k = rows_usable(k_in), v = rows_usable(v_in);
  TORCH_CHECK(q.dim() == (cu_seqlens_q.has_value() ? 3 : 4), "flash4: q must be ",
              cu_seqlens_q.has_value() ? "[Tq, Hq, D] with cu_seqlens_q" : "[B, Sq, Hq, D]", ", got rank ", q.dim());

  flash4_forward_args a;
  flash4_forward_args_init(&a);
  const Common c = common(q, sink, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                          causal, window_left, window_right, softcap);
  a.device = c.device;
  a.stream = c.stream;
  a.options = c.options;
  a.varlen = c.varlen;
  if (page_table.has_value()) {
    TORCH_CHECK(page_table->dim() == 2, "flash4: page_table must be [B, max_pages_per_seq]");
    a.paged.page_table = int32_pointer(page_table, q, "page_table");
    a.paged.max_pages_per_seq = page_table->size(1);
    a.paged.page_size = int(k.size(1));
    if (!c.packed) a.varlen.batch = int(page_table->size(0));
  }

  const int64_t dv = v.size(-1);
  Tensor out, lse;
  auto float_options = q.options().dtype(at::kFloat);
  if (c.packed) {
    // Tokens past cu_seqlens_q[batch] belong to no sequence and are not written: zeros.
    out = at::zeros({q.size(0), q.size(1), dv}, q.options());
    lse = at::zeros({q.size(1), q.size(0)}, float_options);
  } else {
    out = at::empty({q.size(0), q.size(1), q.size(2), dv}, q.options());
    lse = at::empty({q.size(0), q.size(2), q.size(1)}, float_options);
  }
  a.q = view(q, "q");
  a.k = view(k, "k");
  a.v = view(v, "v");
  a.out = view(out, "out");
  a.lse = view(lse, "lse");
  const flash4_status status = flash4_forward(&a);
  if (status != FLASH4_OK) fail("flash4_forward", status);
  return {out, lse};
}

// Gradients of forward (without page_table). dsink is fp32 [Hq] when a sink is given,
// else an empty [0] tensor.
std::tuple<Tensor, Tensor, Tensor, Tensor> backward(const Tensor& dout_in, const Tensor& q_in, const Tensor& k_in,
                                                    const Tensor& v_in, const Tensor& out_in, const Tensor& lse,
                                                    const OptTensor& sink, const OptTensor& cu_seqlens_q,
                                                    const OptTensor& cu_seqlens_k, const OptTensor& seqused_k,
                                                    int64_t max_seqlen_q, int64_t max_seqlen_k, double softmax_scale,
                                                    bool causal, int64_t window_left, int64_t window_right,
                                                    double softcap, bool deterministic) {
  for (const auto& [t, name] : {std::pair{&k_in, "k"}, {&v_in, "v"}, {&out_in, "out"}, {&dout_in, "dout"}, {&lse, "lse"}})
    check_same_device(*t, q_in, name);
  std::optional<c10::cuda::CUDAGuard> guard;
  if (q_in.is_cuda()) guard.emplace(q_in.device());
  const Tensor q = rows_usable(q_in), k = rows_usable(k_in), v = rows_usable(v_in);
  const Tensor out = rows_usable(out_in), dout = rows_usable(dout_in.to(out_in.scalar_type()));

  flash4_backward_args a;
  flash4_backward_args_init(&a);
  const Common c = common(q, sink, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                          causal, window_left, window_right, softcap);
  a.device = c.device;
  a.stream = c.stream;
  a.options = c.options;
  a.varlen = c.varlen;
  a.deterministic = deterministic ? 1 : 0;

  Tensor dq = at::empty(q.sizes(), q.options());
  Tensor dk = at::empty(k.sizes(), k.options());
  Tensor dv = at::empty(v.sizes(), v.options());
  Tensor dsink = at::empty({sink.has_value() ? sink->numel() : 0}, q.options().dtype(at::kFloat));
  a.q = view(q, "q");
  a.k = view(k, "k");
  a.v = view(v, "v");
  a.out = view(out, "out");
  a.dout = view(dout, "dout");
  a.lse = view(lse.stride(-1) == 1 ? lse : lse.contiguous(), "lse");
  a.dq = view(dq, "dq");
  a.dk = view(dk, "dk");
  a.dv = view(dv, "dv");
  a.dsink = sink.has_value() ? dsink.data_ptr<float>() : nullptr;
  const flash4_status status = flash4_backward(&a);
  if (status != FLASH4_OK) fail("flash4_backward", status);
  return {dq, dk, dv, dsink};
}

// Which implementation the last call on this thread ran ("portable", "hopper", "cpu", "reference").
std::string last_backend() { return flash4_last_backend(); }

}  // namespace

TORCH_LIBRARY(flash4, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, Tensor? sink, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, "
      "Tensor? seqused_k, Tensor? page_table, int max_seqlen_q, int max_seqlen_k, float softmax_scale, "
      "bool causal, int window_left, int window_right, float softcap, bool deterministic=False) "
      "-> (Tensor out, Tensor lse)");
  m.def(
      "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? sink, "
      "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, Tensor? seqused_k, int max_seqlen_q, int max_seqlen_k, "
      "float softmax_scale, bool causal, int window_left, int window_right, float softcap, bool deterministic) "
      "-> (Tensor dq, Tensor dk, Tensor dv, Tensor dsink)");
  m.def("last_backend() -> str", &last_backend);
}

TORCH_LIBRARY_IMPL(flash4, CUDA, m) {
  m.impl("fwd", &forward);
  m.impl("bwd", &backward);
}

TORCH_LIBRARY_IMPL(flash4, CPU, m) {
  m.impl("fwd", &forward);
  m.impl("bwd", &backward);
}
