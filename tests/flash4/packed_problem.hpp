// A varlen (packed) attention problem for the tests: q[Tq][Hq][Dqk], k[Tk][Hkv][Dqk],
// v[Tk][Hkv][Dv] with cu_seqlens, run through the C ABI with NaN-poisoned outputs.
#pragma once

#include "dense_problem.hpp"

namespace flash4_test {

struct PackedProblem {
  std::vector<int32_t> cu_q, cu_k;  // [batch + 1]
  std::vector<int32_t> seqused_k;   // [batch], or empty
  int64_t Tq = 0, Tk = 0;           // packed lengths (may exceed cu_*[batch]: padding)
  int64_t Hq = 4, Hkv = 2, Dqk = 8, Dv = 8;
  flash4_options options = no_mask_options();
  std::vector<double> sink;  // [Hq] or empty
  flash4_dtype dtype = FLASH4_F64;
  flash4_backend backend = FLASH4_BACKEND_REFERENCE;  // or FLASH4_BACKEND_CPU (the float32 kernels)

  int batch() const { return int(cu_q.size()) - 1; }
  // Sequences of the given (query, key) lengths, packed back to back.
  static PackedProblem of_lengths(const std::vector<std::pair<int32_t, int32_t>>& lengths) {
    PackedProblem p;
    p.cu_q = {0};
    p.cu_k = {0};
    for (auto [sq, sk] : lengths) {
      p.cu_q.push_back(p.cu_q.back() + sq);
      p.cu_k.push_back(p.cu_k.back() + sk);
    }
    p.Tq = p.cu_q.back();
    p.Tk = p.cu_k.back();
    return p;
  }
};

inline DenseInputs random_inputs(const PackedProblem& p, std::mt19937_64& rng) {
  return {random_values(rng, p.Tq * p.Hq * p.Dqk), random_values(rng, p.Tk * p.Hkv * p.Dqk),
          random_values(rng, p.Tk * p.Hkv * p.Dv)};
}

inline NaiveOutput naive_packed(const PackedProblem& p, const DenseInputs& in) {
  return naive_varlen(in.q, in.k, in.v, p.cu_q, p.cu_k, p.seqused_k, p.Tq, p.Hq, p.Hkv, p.Dqk, p.Dv, p.options,
                      p.sink.empty() ? nullptr : p.sink.data());
}

template <class Args>
void bind_packed(const PackedProblem& p, const std::vector<float>& sink_f32, Args& a) {
  a.backend = p.backend;
  a.options = p.options;
  a.options.sink = p.sink.empty() ? nullptr : sink_f32.data();
  a.varlen.cu_seqlens_q = p.cu_q.data();
  a.varlen.cu_seqlens_k = p.cu_k.data();
  a.varlen.seqused_k = p.seqused_k.empty() ? nullptr : p.seqused_k.data();
  a.varlen.batch = p.batch();
}

// out [Tq][Hq][Dv], lse [Hq][Tq].
inline ForwardResult run_packed_forward(const PackedProblem& p, const DenseInputs& in) {
  HostTensor q(p.dtype, {p.Tq, p.Hq, p.Dqk}), k(p.dtype, {p.Tk, p.Hkv, p.Dqk}), v(p.dtype, {p.Tk, p.Hkv, p.Dv});
  HostTensor out(p.dtype, {p.Tq, p.Hq, p.Dv}), lse(FLASH4_F32, {p.Hq, p.Tq});
  q.assign(in.q);
  k.assign(in.k);
  v.assign(in.v);
  out.poison();
  lse.poison();
  const std::vector<float> sink_f32(p.sink.begin(), p.sink.end());
  flash4::ForwardArgs a = flash4::forward_args();
  a.q = q.view(), a.k = k.view(), a.v = v.view(), a.out = out.view(), a.lse = lse.view();
  bind_packed(p, sink_f32, a);
  ForwardResult r;
  r.status = flash4_forward(&a);
  r.error = flash4_last_error();
  r.out = out.values();
  r.lse = lse.values();
  r.all_written = true;
  for (double x : r.out) r.all_written = r.all_written && !std::isnan(x);
  for (double x : r.lse) r.all_written = r.all_written && !std::isnan(x);
  return r;
}

inline BackwardResult run_packed_backward(const PackedProblem& p, const DenseInputs& in,
                                          const std::vector<double>& dout_values) {
  HostTensor q(p.dtype, {p.Tq, p.Hq, p.Dqk}), k(p.dtype, {p.Tk, p.Hkv, p.Dqk}), v(p.dtype, {p.Tk, p.Hkv, p.Dv});
  HostTensor out(p.dtype, {p.Tq, p.Hq, p.Dv}), lse(FLASH4_F32, {p.Hq, p.Tq}), dout(p.dtype, {p.Tq, p.Hq, p.Dv});
  HostTensor dq(p.dtype, {p.Tq, p.Hq, p.Dqk}), dk(p.dtype, {p.Tk, p.Hkv, p.Dqk}), dv(p.dtype, {p.Tk, p.Hkv, p.Dv});
  q.assign(in.q);
  k.assign(in.k);
  v.assign(in.v);
  dout.assign(dout_values);
  const std::vector<float> sink_f32(p.sink.begin(), p.sink.end());
  flash4::ForwardArgs f = flash4::forward_args();
  f.q = q.view(), f.k = k.view(), f.v = v.view(), f.out = out.view(), f.lse = lse.view();
  bind_packed(p, sink_f32, f);
  flash4::forward(f);

  dq.poison();
  dk.poison();
  dv.poison();
  std::vector<float> dsink(p.Hq, std::numeric_limits<float>::quiet_NaN());
  flash4::BackwardArgs b = flash4::backward_args();
  b.q = q.view(), b.k = k.view(), b.v = v.view(), b.out = out.view(), b.dout = dout.view(), b.lse = lse.view();
  b.dq = dq.view(), b.dk = dk.view(), b.dv = dv.view();
  b.dsink = p.sink.empty() ? nullptr : dsink.data();
  bind_packed(p, sink_f32, b);
  BackwardResult r;
  r.status = flash4_backward(&b);
  r.error = flash4_last_error();
  r.dq = dq.values();
  r.dk = dk.values();
  r.dv = dv.values();
  r.all_written = dq.all_finite() && dk.all_finite() && dv.all_finite();
  if (!p.sink.empty()) r.dsink.assign(dsink.begin(), dsink.end());
  return r;
}

}  // namespace flash4_test
