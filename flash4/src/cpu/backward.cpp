// flash4's CPU backward kernel in float32 (FLASH4_BACKEND_CPU; what FLASH4_BACKEND_AUTO runs
// on the CPU for f32 / f16 / bf16 tensors). As the GPU kernels, it takes P from the forward's
// lse and D_i = dO_i . O_i from the forward's out (the reference recomputes both in float64):
//   P_ij  = exp(s_ij - lse_i)            (s soft-capped: s = c tanh(scale q.k / c))
//   dV_j  = sum_i P_ij dO_i              dP_ij = dO_i . V_j
//   dS_ij = P_ij (dP_ij - D_i) (softcap ? 1 - tanh^2 : 1)
//   dQ_i  = scale sum_j dS_ij K_j        dK_j  = scale sum_i dS_ij Q_i
//   dsink_h = -sum_i exp(sink_h - lse_i) D_i
// One (sequence, KV head) per OpenMP work item: the query heads sharing a KV head add into
// its dK / dV in one fixed order, so results are deterministic at any thread count (the
// `deterministic` flag asks for nothing more). Per block of kBlockRows query rows, over the
// union of their visible keys, five register-tiled products (row_ops.hpp's gemm): S = Q K^T,
// dP = dO V^T, dQ = dS K, and dK^T += Q^T dS, dV^T += dO^T P into transposed sums ([d][j]),
// each row's P and dS zero outside its own keys.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backends.hpp"
#include "cpu/row_ops.hpp"
#include "reference/sequences.hpp"

namespace flash4::detail {
namespace {

struct BackwardItem {
  const flash4_backward_args& args;
  const ProblemShape& shape;
  const SequenceMap& map;
  std::vector<double>& dsink_partial;  // [b][h]
};

// Query rows a block takes: 16, so that dK^T and dV^T, read and written once a block, get 16
// terms a visit (with 4 they were the bottleneck).
constexpr int kBlockRows = 16;

FLASH4_CPU_CLONES void backward_item(const BackwardItem& w, int64_t item) {
  constexpr int R = kBlockRows;
  const flash4_backward_args& args = w.args;
  const flash4_options& o = args.options;
  const int64_t Hq = w.shape.heads_q, Hkv = w.shape.heads_kv, group = Hq / Hkv;
  const int64_t Dqk = w.shape.d_qk, Dv = w.shape.d_v;
  const int64_t b = item / Hkv, h_kv = item % Hkv;
  const int64_t Sq = w.map.seqlen_q(b), Sk = w.map.seqlen_k(b);
  const float scale = float(w.shape.softmax_scale), softcap = o.softcap;
  const float* lse_data = static_cast<const float*>(args.lse.data);

  // Row strides: ld along the keys (Kt, Vt, dKt, dVt, s, p, dp), ldk along K's head dim
  // (padded_stride).
  const int64_t ld = cpu::padded_stride(Sk), ldk = cpu::padded_stride(Dqk);
  std::vector<float> K(Sk * ldk), Kt(Dqk * ld), Vt(Dv * ld), dKt(Dqk * ld, 0.0f), dVt(Dv * ld, 0.0f);
  std::vector<float> row(std::max(Dqk, Dv)), out(Dv), q(R * Dqk), qt(Dqk * R), dout(R * Dv), doutt(Dv * R);
  std::vector<float> dq(R * Dqk), s(R * ld), p(R * ld), dp(R * ld), tanh_s(softcap > 0 ? R * ld : 0);
  load_key_rows(w.map, args.k, b, h_kv, Sk, Dqk, K.data(), ldk);
  for (int64_t j = 0; j < Sk; ++j)
    for (int64_t d = 0; d < Dqk; ++d) Kt[d * ld + j] = K[j * ldk + d];
  load_key_rows_transposed(w.map, args.v, b, h_kv, Sk, Dv, Vt.data(), ld);
  for (int64_t h = h_kv * group; h < (h_kv + 1) * group; ++h) {
    const float* sink = o.sink != nullptr ? o.sink + h : nullptr;
    for (int64_t i0 = 0; i0 < Sq; i0 += R) {
      const int rows = int(std::min<int64_t>(R, Sq - i0));
      KeyRange keys[R];
      float lse[R], D[R];
      int64_t jb = Sk, je = 0;
      std::fill(qt.begin(), qt.end(), 0.0f);
      std::fill(doutt.begin(), doutt.end(), 0.0f);
      for (int r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        load_row(args.q.dtype, args.q.data, w.map.q_row(args.q, b, i, h), Dqk, q.data() + r * Dqk);
        load_row(args.dout.dtype, args.dout.data, w.map.q_row(args.dout, b, i, h), Dv, dout.data() + r * Dv);
        load_row(args.out.dtype, args.out.data, w.map.q_row(args.out, b, i, h), Dv, out.data());
        for (int64_t d = 0; d < Dqk; ++d) qt[d * R + r] = q[r * Dqk + d];
        for (int64_t d = 0; d < Dv; ++d) doutt[d * R + r] = dout[r * Dv + d];
        lse[r] = lse_data[w.map.lse_index(args.lse, b, h, i)];
        D[r] = cpu::lane_dot(dout.data() + r * Dv, out.data(), Dv);
        if (sink != nullptr) w.dsink_partial[b * Hq + h] -= double(std::exp(*sink - lse[r])) * D[r];
        keys[r] = visible_keys(i, Sq, Sk, o);
        if (!keys[r].empty()) jb = std::min(jb, keys[r].begin), je = std::max(je, keys[r].end);
      }
      const int64_t n = je > jb ? je - jb : 0;
      std::fill(dq.begin(), dq.end(), 0.0f);
      if (n > 0) {
        cpu::gemm(s.data() + jb, ld, q.data(), Dqk, Kt.data() + jb, ld, rows, Dqk, n, false);
        cpu::gemm(dp.data() + jb, ld, dout.data(), Dv, Vt.data() + jb, ld, rows, Dv, n, false);
        for (int r = 0; r < rows; ++r) {
          float* s_r = s.data() + r * ld;
          float* p_r = p.data() + r * ld;
          float* dp_r = dp.data() + r * ld;
          const int64_t j0 = keys[r].begin, m = keys[r].empty() ? 0 : keys[r].end - keys[r].begin;
          // P and dS zero outside the row's own keys; dp <- scale dS there (the scale of dQ and
          // dK folded in once).
          std::fill(p_r + jb, p_r + je, 0.0f);
          for (int64_t j = j0; j < j0 + m; ++j) s_r[j] *= scale;
          if (softcap > 0)
            for (int64_t j = j0; j < j0 + m; ++j) {
              tanh_s[r * ld + j] = std::tanh(s_r[j] / softcap);
              s_r[j] = softcap * tanh_s[r * ld + j];
            }
          cpu::exp2_row(p_r + j0, s_r + j0, cpu::kLog2e, lse[r] * cpu::kLog2e, m);
          const float D_r = D[r];
#pragma omp simd
          for (int64_t j = jb; j < je; ++j) dp_r[j] = scale * p_r[j] * (dp_r[j] - D_r);
          if (softcap > 0)
            for (int64_t j = j0; j < j0 + m; ++j) dp_r[j] *= 1.0f - tanh_s[r * ld + j] * tanh_s[r * ld + j];
        }
        cpu::gemm(dq.data(), Dqk, dp.data() + jb, ld, K.data() + jb * ldk, ldk, rows, n, Dqk, false);
        cpu::gemm(dKt.data() + jb, ld, qt.data(), R, dp.data() + jb, ld, Dqk, rows, n, true);
        cpu::gemm(dVt.data() + jb, ld, doutt.data(), R, p.data() + jb, ld, Dv, rows, n, true);
      }
      for (int r = 0; r < rows; ++r)
        store_row(args.dq.dtype, args.dq.data, w.map.q_row(args.dq, b, i0 + r, h), Dqk, dq.data() + r * Dqk);
    }
  }
  for (int64_t j = 0; j < Sk; ++j) {
    for (int64_t d = 0; d < Dqk; ++d) row[d] = dKt[d * ld + j];
    store_row(args.dk.dtype, args.dk.data, w.map.k_row(args.dk, b, j, h_kv), Dqk, row.data());
    for (int64_t d = 0; d < Dv; ++d) row[d] = dVt[d * ld + j];
    store_row(args.dv.dtype, args.dv.data, w.map.k_row(args.dv, b, j, h_kv), Dv, row.data());
  }
}

}  // namespace

flash4_status cpu_backward(const flash4_backward_args& args) {
  const ProblemShape shape = validate_backward(args);
  const SequenceMap map(shape, args.varlen, nullptr);
  // Rows no sequence covers (packed padding, keys past seqused_k) get zero gradients.
  zero_fill(args.dq);
  zero_fill(args.dk);
  zero_fill(args.dv);
  std::vector<double> dsink_partial(shape.batch * shape.heads_q, 0.0);
  BackwardItem work{args, shape, map, dsink_partial};
  parallel_for(shape.batch * shape.heads_kv, [&](int64_t item) { backward_item(work, item); });
  if (args.dsink != nullptr && args.options.sink != nullptr)
    for (int64_t h = 0; h < shape.heads_q; ++h) {
      double total = 0;
      for (int64_t b = 0; b < shape.batch; ++b) total += dsink_partial[b * shape.heads_q + h];
      args.dsink[h] = float(total);
    }
  return FLASH4_OK;
}

}  // namespace flash4::detail
