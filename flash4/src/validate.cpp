// Argument validation for flash4_forward / flash4_backward (see validate.hpp).
#include "validate.hpp"

#include <cmath>
#include <sstream>

namespace flash4::detail {
namespace {

const char* dtype_name(flash4_dtype dtype) {
  switch (dtype) {
    case FLASH4_F32: return "FLASH4_F32";
    case FLASH4_F16: return "FLASH4_F16";
    case FLASH4_BF16: return "FLASH4_BF16";
    case FLASH4_F64: return "FLASH4_F64";
  }
  return "an unknown dtype";
}

bool valid_dtype(flash4_dtype dtype) {
  return dtype == FLASH4_F32 || dtype == FLASH4_F16 || dtype == FLASH4_BF16 || dtype == FLASH4_F64;
}

// Builds and throws messages of the form "<entry point>: <what is wrong>".
class Checker {
 public:
  Checker(const char* entry_point, flash4_device device) : entry_point_(entry_point), device_(device) {}

  template <class... Parts>
  [[noreturn]] void fail(const Parts&... parts) const {
    std::ostringstream message;
    message << entry_point_ << ": ";
    (message << ... << parts);
    throw InvalidArgument(message.str());
  }

  // Host-readable pointers (cu_seqlens, seqused_k, page table, sink) are only
  // dereferenced on the CPU; on CUDA they are device pointers.
  bool host_readable() const { return device_ == FLASH4_CPU; }

  // Pointer, rank, dtype, non-negative extents, contiguous last dimension.
  void tensor(const flash4_tensor& t, const char* name, int rank, const char* layout) const {
    if (t.data == nullptr) fail(name, ".data is NULL");
    if (t.rank != rank) fail(name, ".rank is ", t.rank, " but must be ", rank, " (", layout, ")");
    if (!valid_dtype(t.dtype)) fail(name, ".dtype (", int(t.dtype), ") is not a flash4_dtype");
    for (int d = 0; d < rank; ++d)
      if (t.shape[d] < 0) fail(name, ".shape[", d, "] (", t.shape[d], ") is negative");
    const int last = rank - 1;
    if (t.stride[last] != 1 && t.shape[last] > 1)
      fail(name, ".stride[", last, "] (", t.stride[last], ") must be 1: the last dimension must be contiguous");
  }

  // t.shape[d] must equal `expected`, which the message calls `what` (e.g. "Dv=16 (v.shape[3])").
  void dim(const flash4_tensor& t, const char* name, int d, int64_t expected, const std::string& what) const {
    if (t.shape[d] != expected) fail(name, ".shape[", d, "] (", t.shape[d], ") must equal ", what);
  }

  void same_dtype(const flash4_tensor& t, const char* name, const flash4_tensor& q) const {
    if (t.dtype != q.dtype)
      fail(name, ".dtype (", dtype_name(t.dtype), ") must equal q.dtype (", dtype_name(q.dtype), ")");
  }

  // Same rank and shape as `ref` (strides may differ).
  void same_shape(const flash4_tensor& t, const char* name, const flash4_tensor& ref, const char* ref_name) const {
    for (int d = 0; d < ref.rank; ++d)
      if (t.shape[d] != ref.shape[d])
        fail(name, ".shape[", d, "] (", t.shape[d], ") must equal ", ref_name, ".shape[", d, "] (", ref.shape[d], ")");
  }

 private:
  const char* entry_point_;
  flash4_device device_;
};

std::string named(const char* symbol, int64_t value, const std::string& source) {
  std::ostringstream s;
  s << symbol << "=" << value << " (" << source << ")";
  return s.str();
}

std::string shape_ref(const char* tensor, int d) {
  std::ostringstream s;
  s << tensor << ".shape[" << d << "]";
  return s.str();
}

// The operands forward and backward share.
struct Operands {
  flash4_device device;
  flash4_backend backend;
  const flash4_tensor* q;
  const flash4_tensor* k;
  const flash4_tensor* v;
  const flash4_tensor* out;
  const flash4_tensor* lse;  // data may be NULL (forward: optional)
  const flash4_options* options;
  const flash4_varlen* varlen;
  const flash4_paged_kv* paged;  // NULL in backward
};

void check_device_and_backend(const Checker& c, flash4_device device, flash4_backend backend) {
  if (device != FLASH4_CPU && device != FLASH4_CUDA)
    c.fail("device (", int(device), ") must be FLASH4_CPU or FLASH4_CUDA");
  switch (backend) {
    case FLASH4_BACKEND_AUTO: break;
    case FLASH4_BACKEND_REFERENCE:
    case FLASH4_BACKEND_CPU:
      if (device != FLASH4_CPU)
        c.fail("backend ", backend == FLASH4_BACKEND_REFERENCE ? "FLASH4_BACKEND_REFERENCE" : "FLASH4_BACKEND_CPU",
               " runs on the CPU only, but device is FLASH4_CUDA "
               "(use FLASH4_BACKEND_AUTO, or device FLASH4_CPU with host pointers)");
      break;
    case FLASH4_BACKEND_PORTABLE:
    case FLASH4_BACKEND_HOPPER:
      if (device != FLASH4_CUDA)
        c.fail("backend ", backend == FLASH4_BACKEND_PORTABLE ? "FLASH4_BACKEND_PORTABLE" : "FLASH4_BACKEND_HOPPER",
               " needs device FLASH4_CUDA, but device is FLASH4_CPU");
      break;
    default: c.fail("backend (", int(backend), ") is not a flash4_backend");
  }
}

void check_options(const Checker& c, const flash4_options& o, int64_t heads_q) {
  if (!std::isfinite(o.softmax_scale))
    c.fail("options.softmax_scale (", o.softmax_scale, ") must be finite (0 means 1/sqrt(Dqk))");
  if (!std::isfinite(o.softcap) || o.softcap < 0)
    c.fail("options.softcap (", o.softcap, ") must be finite and >= 0 (0 means off)");
  if (o.sink != nullptr && c.host_readable())
    for (int64_t h = 0; h < heads_q; ++h)
      if (!std::isfinite(o.sink[h])) c.fail("options.sink[", h, "] (", o.sink[h], ") must be finite");
}

// cu_seqlens must start at >= 0, never decrease, end within the packed tensor, and (when
// max_seqlen is given) have no sequence longer than max_seqlen.
void check_cu_seqlens(const Checker& c, const int32_t* cu, const char* name, int64_t batch, int64_t tokens,
                      const char* tokens_name, int max_seqlen, const char* max_name) {
  if (!c.host_readable()) return;
  if (cu[0] < 0) c.fail("varlen.", name, "[0] (", cu[0], ") must be >= 0");
  for (int64_t b = 0; b < batch; ++b) {
    if (cu[b + 1] < cu[b])
      c.fail("varlen.", name, " must be non-decreasing, but ", name, "[", b + 1, "] (", cu[b + 1], ") < ", name,
             "[", b, "] (", cu[b], ")");
    if (max_seqlen > 0 && cu[b + 1] - cu[b] > max_seqlen)
      c.fail("sequence ", b, " has ", cu[b + 1] - cu[b], " tokens (varlen.", name, ") but varlen.", max_name, " is ",
             max_seqlen);
  }
  if (cu[batch] > tokens)
    c.fail("varlen.", name, "[", batch, "] (", cu[batch], ") exceeds the packed length ", tokens_name, " (", tokens,
           ")");
}

ProblemShape check_operands(const Checker& c, const Operands& a, bool lse_required) {
  check_device_and_backend(c, a.device, a.backend);
  const flash4_varlen& vl = *a.varlen;
  const bool varlen = vl.cu_seqlens_q != nullptr;
  const bool paged = a.paged != nullptr && a.paged->page_table != nullptr;

  // Ranks and pointers.
  if (varlen) {
    c.tensor(*a.q, "q", 3, "varlen q is [Tq, Hq, Dqk]");
    c.tensor(*a.out, "out", 3, "varlen out is [Tq, Hq, Dv]");
  } else {
    c.tensor(*a.q, "q", 4, "dense q is [B, Sq, Hq, Dqk]");
    c.tensor(*a.out, "out", 4, "dense out is [B, Sq, Hq, Dv]");
  }
  if (paged) {
    c.tensor(*a.k, "k", 4, "paged k is [num_pages, page_size, Hkv, Dqk]");
    c.tensor(*a.v, "v", 4, "paged v is [num_pages, page_size, Hkv, Dv]");
  } else if (varlen) {
    c.tensor(*a.k, "k", 3, "varlen k is [Tk, Hkv, Dqk]");
    c.tensor(*a.v, "v", 3, "varlen v is [Tk, Hkv, Dv]");
  } else {
    c.tensor(*a.k, "k", 4, "dense k is [B, Sk, Hkv, Dqk]");
    c.tensor(*a.v, "v", 4, "dense v is [B, Sk, Hkv, Dv]");
  }
  const bool has_lse = a.lse->data != nullptr;
  if (lse_required && !has_lse) c.fail("lse.data is NULL: the backward needs the forward's LSE");
  if (has_lse) c.tensor(*a.lse, "lse", varlen ? 2 : 3, varlen ? "varlen lse is [Hq, Tq]" : "dense lse is [B, Hq, Sq]");

  // Dtypes.
  const flash4_tensor& q = *a.q;
  const flash4_tensor& k = *a.k;
  const flash4_tensor& v = *a.v;
  const flash4_tensor& out = *a.out;
  if (q.dtype == FLASH4_F64 && a.device != FLASH4_CPU)
    c.fail("q.dtype is FLASH4_F64, which only device FLASH4_CPU (the float64 reference) accepts");
  c.same_dtype(k, "k", q);
  c.same_dtype(v, "v", q);
  c.same_dtype(out, "out", q);
  if (has_lse && a.lse->dtype != FLASH4_F32)
    c.fail("lse.dtype (", dtype_name(a.lse->dtype), ") must be FLASH4_F32");

  // Heads and head dims (the last two dimensions in every layout).
  const int qh = q.rank - 2, kh = k.rank - 2;
  ProblemShape s;
  s.varlen = varlen;
  s.paged = paged;
  s.heads_q = q.shape[qh];
  s.d_qk = q.shape[qh + 1];
  s.heads_kv = k.shape[kh];
  s.d_v = v.shape[kh + 1];
  if (s.heads_q < 1) c.fail("q.shape[", qh, "] (Hq=", s.heads_q, ") must be >= 1");
  if (s.d_qk < 1) c.fail("q.shape[", qh + 1, "] (Dqk=", s.d_qk, ") must be >= 1");
  if (s.heads_kv < 1) c.fail("k.shape[", kh, "] (Hkv=", s.heads_kv, ") must be >= 1");
  if (s.d_v < 1) c.fail("v.shape[", kh + 1, "] (Dv=", s.d_v, ") must be >= 1");
  if (s.heads_q % s.heads_kv != 0)
    c.fail("k.shape[", kh, "] (Hkv=", s.heads_kv, ") must divide q.shape[", qh, "] (Hq=", s.heads_q, ")");
  c.dim(k, "k", kh + 1, s.d_qk, named("Dqk", s.d_qk, shape_ref("q", qh + 1)));
  c.dim(v, "v", kh, s.heads_kv, named("Hkv", s.heads_kv, shape_ref("k", kh)));
  c.dim(out, "out", qh, s.heads_q, named("Hq", s.heads_q, shape_ref("q", qh)));
  c.dim(out, "out", qh + 1, s.d_v, named("Dv", s.d_v, shape_ref("v", kh + 1)));

  // Leading (batch / sequence / token) dimensions.
  if (varlen) {
    s.tokens_q = q.shape[0];
    c.dim(out, "out", 0, s.tokens_q, named("Tq", s.tokens_q, "q.shape[0]"));
    if (has_lse) {
      c.dim(*a.lse, "lse", 0, s.heads_q, named("Hq", s.heads_q, "q.shape[1]"));
      c.dim(*a.lse, "lse", 1, s.tokens_q, named("Tq", s.tokens_q, "q.shape[0]"));
    }
    if (vl.batch < 0) c.fail("varlen.batch (", vl.batch, ") must be >= 0");
    if (vl.max_seqlen_q < 0) c.fail("varlen.max_seqlen_q (", vl.max_seqlen_q, ") must be >= 0");
    if (vl.max_seqlen_k < 0) c.fail("varlen.max_seqlen_k (", vl.max_seqlen_k, ") must be >= 0");
    s.batch = vl.batch;
    s.seqlen_q = vl.max_seqlen_q;
    s.seqlen_k = vl.max_seqlen_k;
    check_cu_seqlens(c, vl.cu_seqlens_q, "cu_seqlens_q", s.batch, s.tokens_q, "q.shape[0]", vl.max_seqlen_q,
                     "max_seqlen_q");
  } else {
    if (vl.cu_seqlens_k != nullptr)
      c.fail("varlen.cu_seqlens_k is set but varlen.cu_seqlens_q is NULL: packed k needs packed q");
    s.batch = q.shape[0];
    s.seqlen_q = q.shape[1];
    s.tokens_q = s.batch * s.seqlen_q;
    c.dim(out, "out", 0, s.batch, named("B", s.batch, "q.shape[0]"));
    c.dim(out, "out", 1, s.seqlen_q, named("Sq", s.seqlen_q, "q.shape[1]"));
    if (has_lse) {
      c.dim(*a.lse, "lse", 0, s.batch, named("B", s.batch, "q.shape[0]"));
      c.dim(*a.lse, "lse", 1, s.heads_q, named("Hq", s.heads_q, "q.shape[2]"));
      c.dim(*a.lse, "lse", 2, s.seqlen_q, named("Sq", s.seqlen_q, "q.shape[1]"));
    }
    if (vl.seqused_k != nullptr && vl.batch != 0 && vl.batch != s.batch)
      c.fail("varlen.batch (", vl.batch, ") must be 0 or equal B=", s.batch, " (q.shape[0]) for dense tensors");
  }

  // Keys: paged, packed or dense; then seqused_k.
  int64_t keys_available_dense = 0;  // dense: Sk; paged: max_pages_per_seq * page_size
  if (paged) {
    const flash4_paged_kv& pg = *a.paged;
    if (vl.cu_seqlens_k != nullptr)
      c.fail("varlen.cu_seqlens_k must be NULL with a page table: key counts come from varlen.seqused_k");
    if (vl.seqused_k == nullptr)
      c.fail("varlen.seqused_k is NULL, but a page table (paged.page_table) needs the key count of each sequence");
    if (pg.page_size <= 0) c.fail("paged.page_size (", pg.page_size, ") must be > 0 with a page table");
    if (pg.max_pages_per_seq <= 0)
      c.fail("paged.max_pages_per_seq (", pg.max_pages_per_seq, ") must be > 0 with a page table");
    c.dim(k, "k", 1, pg.page_size, named("page_size", pg.page_size, "paged.page_size"));
    c.dim(v, "v", 0, k.shape[0], named("num_pages", k.shape[0], "k.shape[0]"));
    c.dim(v, "v", 1, pg.page_size, named("page_size", pg.page_size, "paged.page_size"));
    keys_available_dense = pg.max_pages_per_seq * pg.page_size;
    if (!varlen) s.seqlen_k = keys_available_dense;
    s.tokens_k = k.shape[0] * pg.page_size;
    if (c.host_readable()) {
      for (int64_t b = 0; b < s.batch; ++b) {
        const int64_t used = vl.seqused_k[b];
        if (used < 0 || used > keys_available_dense)
          c.fail("varlen.seqused_k[", b, "] (", used, ") must be in [0, ", keys_available_dense,
                 "] (paged.max_pages_per_seq * paged.page_size)");
        for (int64_t p = 0; p < (used + pg.page_size - 1) / pg.page_size; ++p) {
          const int32_t page = pg.page_table[b * pg.max_pages_per_seq + p];
          if (page < 0 || page >= k.shape[0])
            c.fail("paged.page_table[", b, "][", p, "] (", page, ") is not a page of k (num_pages=", k.shape[0], ")");
        }
      }
    }
  } else if (varlen) {
    if (vl.cu_seqlens_k == nullptr)
      c.fail("varlen.cu_seqlens_k is NULL but varlen.cu_seqlens_q is set: packed q needs packed k (or a page table)");
    s.tokens_k = k.shape[0];
    c.dim(v, "v", 0, s.tokens_k, named("Tk", s.tokens_k, "k.shape[0]"));
    check_cu_seqlens(c, vl.cu_seqlens_k, "cu_seqlens_k", s.batch, s.tokens_k, "k.shape[0]", vl.max_seqlen_k,
                     "max_seqlen_k");
    if (vl.seqused_k != nullptr && c.host_readable())
      for (int64_t b = 0; b < s.batch; ++b) {
        const int64_t len = vl.cu_seqlens_k[b + 1] - vl.cu_seqlens_k[b];
        if (vl.seqused_k[b] < 0 || vl.seqused_k[b] > len)
          c.fail("varlen.seqused_k[", b, "] (", vl.seqused_k[b], ") must be in [0, ", len,
                 "] (the sequence's length in varlen.cu_seqlens_k)");
      }
  } else {
    c.dim(k, "k", 0, s.batch, named("B", s.batch, "q.shape[0]"));
    s.seqlen_k = k.shape[1];
    s.tokens_k = s.batch * s.seqlen_k;
    c.dim(v, "v", 0, s.batch, named("B", s.batch, "q.shape[0]"));
    c.dim(v, "v", 1, s.seqlen_k, named("Sk", s.seqlen_k, "k.shape[1]"));
    keys_available_dense = s.seqlen_k;
  }
  if (!varlen && vl.seqused_k != nullptr && !paged && c.host_readable())
    for (int64_t b = 0; b < s.batch; ++b)
      if (vl.seqused_k[b] < 0 || vl.seqused_k[b] > keys_available_dense)
        c.fail("varlen.seqused_k[", b, "] (", vl.seqused_k[b], ") must be in [0, ", keys_available_dense,
               "] (Sk, k.shape[1])");

  check_options(c, *a.options, s.heads_q);
  s.softmax_scale = a.options->softmax_scale != 0 ? double(a.options->softmax_scale) : 1.0 / std::sqrt(double(s.d_qk));
  return s;
}

}  // namespace

ProblemShape validate_forward(const flash4_forward_args& args) {
  const Checker c("flash4_forward", args.device);
  const Operands operands{args.device, args.backend, &args.q,       &args.k,      &args.v,
                          &args.out,   &args.lse,    &args.options, &args.varlen, &args.paged};
  ProblemShape s = check_operands(c, operands, /*lse_required=*/false);
  if (args.tuning.exp2_emulation < 0 || args.tuning.exp2_emulation > 2)
    c.fail("tuning.exp2_emulation (", args.tuning.exp2_emulation, ") must be 0 (default), 1 (off) or 2 (on)");
  if (std::isnan(args.tuning.rescale_threshold)) c.fail("tuning.rescale_threshold is NaN");
  return s;
}

ProblemShape validate_backward(const flash4_backward_args& args) {
  const Checker c("flash4_backward", args.device);
  const Operands operands{args.device, args.backend, &args.q,       &args.k,      &args.v,
                          &args.out,   &args.lse,    &args.options, &args.varlen, nullptr};
  ProblemShape s = check_operands(c, operands, /*lse_required=*/true);
  const bool varlen = s.varlen;
  c.tensor(args.dout, "dout", args.out.rank, varlen ? "varlen dout is [Tq, Hq, Dv]" : "dense dout is [B, Sq, Hq, Dv]");
  c.tensor(args.dq, "dq", args.q.rank, varlen ? "varlen dq is [Tq, Hq, Dqk]" : "dense dq is [B, Sq, Hq, Dqk]");
  c.tensor(args.dk, "dk", args.k.rank, varlen ? "varlen dk is [Tk, Hkv, Dqk]" : "dense dk is [B, Sk, Hkv, Dqk]");
  c.tensor(args.dv, "dv", args.v.rank, varlen ? "varlen dv is [Tk, Hkv, Dv]" : "dense dv is [B, Sk, Hkv, Dv]");
  c.same_dtype(args.dout, "dout", args.q);
  c.same_dtype(args.dq, "dq", args.q);
  c.same_dtype(args.dk, "dk", args.q);
  c.same_dtype(args.dv, "dv", args.q);
  c.same_shape(args.dout, "dout", args.out, "out");
  c.same_shape(args.dq, "dq", args.q, "q");
  c.same_shape(args.dk, "dk", args.k, "k");
  c.same_shape(args.dv, "dv", args.v, "v");
  if (args.dsink != nullptr && args.options.sink == nullptr)
    c.fail("dsink is set but options.sink is NULL: there is no sink to differentiate");
  return s;
}

}  // namespace flash4::detail
