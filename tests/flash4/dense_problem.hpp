// A dense attention problem for the tests: logical tensors q[B][Sq][Hq][Dqk],
// k[B][Sk][Hkv][Dqk], v[B][Sk][Hkv][Dv] (row-major doubles), stored in BSHD or BHSD order
// in any dtype, run through the C ABI with NaN-poisoned outputs; and the same problem
// through the naive formula.
#pragma once

#include "test_util.hpp"

namespace flash4_test {

inline flash4_options no_mask_options(float scale = 0.35f) {
  flash4_options o{};
  o.softmax_scale = scale;
  o.window_left = o.window_right = -1;
  return o;
}

// A rank-4 logical [B, S, H, D] tensor stored BSHD (row-major) or BHSD.
class DenseTensor {
 public:
  DenseTensor(flash4_dtype dtype, int64_t B, int64_t S, int64_t H, int64_t D, bool bhsd)
      : B_(B), S_(S), H_(H), D_(D), bhsd_(bhsd),
        storage_(dtype, bhsd ? std::vector<int64_t>{B, H, S, D} : std::vector<int64_t>{B, S, H, D}) {}

  int64_t memory_index(int64_t b, int64_t s, int64_t h, int64_t d) const {
    return bhsd_ ? ((b * H_ + h) * S_ + s) * D_ + d : ((b * S_ + s) * H_ + h) * D_ + d;
  }
  flash4_tensor view() {
    flash4_tensor t = storage_.view();
    t.shape[0] = B_, t.shape[1] = S_, t.shape[2] = H_, t.shape[3] = D_;
    if (bhsd_) t.stride[0] = H_ * S_ * D_, t.stride[1] = D_, t.stride[2] = S_ * D_, t.stride[3] = 1;
    return t;
  }
  void assign(const std::vector<double>& logical) {
    for_each([&](int64_t logical_index, int64_t memory) { storage_.set(memory, logical[logical_index]); });
  }
  std::vector<double> values() const {
    std::vector<double> logical(storage_.numel());
    for_each([&](int64_t logical_index, int64_t memory) { logical[logical_index] = storage_.get(memory); });
    return logical;
  }
  void poison() { storage_.poison(); }
  bool none_nan() const {
    for (double x : storage_.values())
      if (std::isnan(x)) return false;
    return true;
  }

 private:
  template <class F>
  void for_each(F&& f) const {
    int64_t i = 0;
    for (int64_t b = 0; b < B_; ++b)
      for (int64_t s = 0; s < S_; ++s)
        for (int64_t h = 0; h < H_; ++h)
          for (int64_t d = 0; d < D_; ++d) f(i++, memory_index(b, s, h, d));
  }

  int64_t B_, S_, H_, D_;
  bool bhsd_;
  HostTensor storage_;
};

struct DenseProblem {
  int64_t B = 2, Sq = 5, Sk = 7, Hq = 4, Hkv = 2, Dqk = 8, Dv = 8;
  flash4_options options = no_mask_options();
  std::vector<double> sink;        // [Hq] (float-representable), or empty for none
  std::vector<int32_t> seqused_k;  // [B], or empty
  flash4_dtype dtype = FLASH4_F64;
  bool bhsd = false;
  flash4_backend backend = FLASH4_BACKEND_REFERENCE;  // or FLASH4_BACKEND_CPU (the float32 kernels)

  int64_t q_numel() const { return B * Sq * Hq * Dqk; }
  int64_t k_numel() const { return B * Sk * Hkv * Dqk; }
  int64_t v_numel() const { return B * Sk * Hkv * Dv; }
  int64_t out_numel() const { return B * Sq * Hq * Dv; }
};

struct DenseInputs {
  std::vector<double> q, k, v;
};

inline DenseInputs random_inputs(const DenseProblem& p, std::mt19937_64& rng) {
  return {random_values(rng, p.q_numel()), random_values(rng, p.k_numel()), random_values(rng, p.v_numel())};
}

// The inputs rounded to `dtype` (what the library reads), as doubles.
inline DenseInputs rounded_to(flash4_dtype dtype, DenseInputs in) {
  for (auto* values : {&in.q, &in.k, &in.v}) {
    HostTensor t(dtype, {int64_t(values->size())});
    t.assign(*values);
    *values = t.values();
  }
  return in;
}

// Float-representable sink logits, so the library's fp32 sink and the naive formula's
// float64 sink are the same numbers.
inline std::vector<double> random_sink(std::mt19937_64& rng, int64_t Hq) {
  std::vector<double> s = random_values(rng, Hq);
  for (double& x : s) x = double(float(x));
  return s;
}

struct ForwardResult {
  std::vector<double> out;  // [B][Sq][Hq][Dv]
  std::vector<double> lse;  // [B][Hq][Sq]
  bool all_written = false; // no NaN left from the poison
  flash4_status status = FLASH4_OK;
  std::string error;
};

// Binds the problem's options, sink and seqused_k into args (the vectors must outlive the call).
template <class Args>
void bind_options(const DenseProblem& p, const std::vector<float>& sink_f32, Args& a) {
  a.backend = p.backend;
  a.options = p.options;
  a.options.sink = p.sink.empty() ? nullptr : sink_f32.data();
  if (!p.seqused_k.empty()) {
    a.varlen.seqused_k = p.seqused_k.data();
    a.varlen.batch = int(p.B);
  }
}

inline ForwardResult run_forward(const DenseProblem& p, const DenseInputs& in) {
  DenseTensor q(p.dtype, p.B, p.Sq, p.Hq, p.Dqk, p.bhsd), k(p.dtype, p.B, p.Sk, p.Hkv, p.Dqk, p.bhsd);
  DenseTensor v(p.dtype, p.B, p.Sk, p.Hkv, p.Dv, p.bhsd), out(p.dtype, p.B, p.Sq, p.Hq, p.Dv, p.bhsd);
  HostTensor lse(FLASH4_F32, {p.B, p.Hq, p.Sq});
  q.assign(in.q);
  k.assign(in.k);
  v.assign(in.v);
  out.poison();
  lse.poison();
  const std::vector<float> sink_f32(p.sink.begin(), p.sink.end());
  flash4::ForwardArgs a = flash4::forward_args();
  a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view(), a.lse = lse.view();
  bind_options(p, sink_f32, a);
  ForwardResult r;
  r.status = flash4_forward(&a);
  r.error = flash4_last_error();
  r.out = out.values();
  r.lse = lse.values();
  r.all_written = out.none_nan();
  for (double x : r.lse) r.all_written = r.all_written && !std::isnan(x);
  return r;
}

struct BackwardResult {
  std::vector<double> dq, dk, dv;  // logical, like q, k, v
  std::vector<double> dsink;       // [Hq] when the problem has a sink
  bool all_written = false;
  flash4_status status = FLASH4_OK;
  std::string error;
};

// Forward (for out and lse), then backward with dout, NaN-poisoned gradients.
inline BackwardResult run_backward(const DenseProblem& p, const DenseInputs& in, const std::vector<double>& dout_values,
                                   int deterministic = 1) {
  DenseTensor q(p.dtype, p.B, p.Sq, p.Hq, p.Dqk, p.bhsd), k(p.dtype, p.B, p.Sk, p.Hkv, p.Dqk, p.bhsd);
  DenseTensor v(p.dtype, p.B, p.Sk, p.Hkv, p.Dv, p.bhsd), out(p.dtype, p.B, p.Sq, p.Hq, p.Dv, p.bhsd);
  DenseTensor dout(p.dtype, p.B, p.Sq, p.Hq, p.Dv, p.bhsd), dq(p.dtype, p.B, p.Sq, p.Hq, p.Dqk, p.bhsd);
  DenseTensor dk(p.dtype, p.B, p.Sk, p.Hkv, p.Dqk, p.bhsd), dv(p.dtype, p.B, p.Sk, p.Hkv, p.Dv, p.bhsd);
  HostTensor lse(FLASH4_F32, {p.B, p.Hq, p.Sq});
  q.assign(in.q);
  k.assign(in.k);
  v.assign(in.v);
  dout.assign(dout_values);
  const std::vector<float> sink_f32(p.sink.begin(), p.sink.end());
  flash4::ForwardArgs f = flash4::forward_args();
  f.q = q.view(), f.k = k.view(), f.v = v.view(), f.out = out.view(), f.lse = lse.view();
  bind_options(p, sink_f32, f);
  flash4::forward(f);

  dq.poison();
  dk.poison();
  dv.poison();
  std::vector<float> dsink(p.Hq, std::numeric_limits<float>::quiet_NaN());
  flash4::BackwardArgs b = flash4::backward_args();
  b.q = q.view(), b.k = k.view(), b.v = v.view(), b.out = out.view(), b.dout = dout.view(), b.lse = lse.view();
  b.dq = dq.view(), b.dk = dk.view(), b.dv = dv.view();
  b.dsink = p.sink.empty() ? nullptr : dsink.data();
  b.deterministic = deterministic;
  bind_options(p, sink_f32, b);
  BackwardResult r;
  r.status = flash4_backward(&b);
  r.error = flash4_last_error();
  r.dq = dq.values();
  r.dk = dk.values();
  r.dv = dv.values();
  r.all_written = dq.none_nan() && dk.none_nan() && dv.none_nan();
  if (!p.sink.empty()) {
    r.dsink.assign(dsink.begin(), dsink.end());
    for (double x : r.dsink) r.all_written = r.all_written && !std::isnan(x);
  }
  return r;
}

// The naive formula on the problem: out[B][Sq][Hq][Dv], lse[B][Hq][Sq]. `sink`
// overrides p.sink (for finite differences).
inline NaiveOutput naive_dense(const DenseProblem& p, const DenseInputs& in, const std::vector<double>* sink = nullptr) {
  if (sink == nullptr) sink = &p.sink;
  NaiveOutput r{std::vector<double>(p.out_numel()), std::vector<double>(p.B * p.Hq * p.Sq)};
  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t Sk = p.seqused_k.empty() ? p.Sk : p.seqused_k[b];
    NaiveOutput s = naive_attention(in.q.data() + b * p.Sq * p.Hq * p.Dqk, in.k.data() + b * p.Sk * p.Hkv * p.Dqk,
                                    in.v.data() + b * p.Sk * p.Hkv * p.Dv, p.Sq, Sk, p.Hq, p.Hkv, p.Dqk, p.Dv,
                                    p.options, sink->empty() ? nullptr : sink->data());
    std::copy(s.out.begin(), s.out.end(), r.out.begin() + b * p.Sq * p.Hq * p.Dv);
    std::copy(s.lse.begin(), s.lse.end(), r.lse.begin() + b * p.Hq * p.Sq);
  }
  return r;
}

// Central-difference gradients of sum(naive out * g) with respect to q, k, v and the sink.
struct NaiveGradients {
  std::vector<double> dq, dk, dv, dsink;
};

inline NaiveGradients finite_difference_gradients(const DenseProblem& p, const DenseInputs& in,
                                                  const std::vector<double>& g) {
  NaiveGradients r;
  r.dq = finite_difference_gradient(in.q, [&](const std::vector<double>& x) {
    return dot(naive_dense(p, {x, in.k, in.v}).out, g);
  });
  r.dk = finite_difference_gradient(in.k, [&](const std::vector<double>& x) {
    return dot(naive_dense(p, {in.q, x, in.v}).out, g);
  });
  r.dv = finite_difference_gradient(in.v, [&](const std::vector<double>& x) {
    return dot(naive_dense(p, {in.q, in.k, x}).out, g);
  });
  if (!p.sink.empty())
    r.dsink = finite_difference_gradient(p.sink, [&](const std::vector<double>& x) {
      return dot(naive_dense(p, in, &x).out, g);
    });
  return r;
}

// max |a - b| <= tolerance * max |b|: the error measure for low-precision results, whose
// absolute error scales with the magnitude of the whole tensor, not of each element.
inline ::testing::AssertionResult close_relative_to_max(const std::vector<double>& actual,
                                                        const std::vector<double>& expected, double tolerance) {
  double max_expected = 0, max_error = 0;
  size_t worst = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    max_expected = std::max(max_expected, std::fabs(expected[i]));
    const double err = std::fabs(actual[i] - expected[i]);
    if (std::isnan(err))
      return ::testing::AssertionFailure() << "element " << i << ": " << actual[i] << " vs " << expected[i];
    if (err > max_error) max_error = err, worst = i;
  }
  if (max_error <= tolerance * max_expected)
    return ::testing::AssertionSuccess() << "max error " << max_error << " of max " << max_expected;
  return ::testing::AssertionFailure() << "max |diff| " << max_error << " at element " << worst << " ("
                                       << actual[worst] << " vs " << expected[worst] << ") exceeds " << tolerance
                                       << " * max|expected| (" << max_expected << ")";
}

}  // namespace flash4_test
