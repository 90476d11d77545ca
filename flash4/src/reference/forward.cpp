// CPU reference forward: exact softmax attention in float64, one (batch, query head)
// per OpenMP work item. Reads and writes every dtype; rounds each output once.
#include <vector>

#include "backends.hpp"
#include "reference/sequences.hpp"

namespace flash4::detail {

flash4_status reference_forward(const flash4_forward_args& args) {
  const ProblemShape shape = validate_forward(args);
  const SequenceMap map(shape, args.varlen, &args.paged);
  const flash4_options& o = args.options;
  const int64_t Hq = shape.heads_q, group = shape.heads_q / shape.heads_kv;
  const int64_t Dqk = shape.d_qk, Dv = shape.d_v;
  const double softcap = o.softcap;
  const bool write_lse = args.lse.data != nullptr;

  parallel_for(shape.batch * Hq, [&](int64_t item) {
    const int64_t b = item / Hq, h = item % Hq, h_kv = h / group;
    const int64_t Sq = map.seqlen_q(b), Sk = map.seqlen_k(b);
    std::vector<double> K(Sk * Dqk), V(Sk * Dv), q_i(Dqk), out_i(Dv), s(Sk), p(Sk);
    load_key_rows(map, args.k, b, h_kv, Sk, Dqk, K.data());
    load_key_rows(map, args.v, b, h_kv, Sk, Dv, V.data());
    const float* sink = o.sink != nullptr ? o.sink + h : nullptr;
    for (int64_t i = 0; i < Sq; ++i) {
      load_row(args.q.dtype, args.q.data, map.q_row(args.q, b, i, h), Dqk, q_i.data());
      const KeyRange keys = visible_keys(i, Sq, Sk, o);
      const RowSoftmax row = softmax_row(q_i.data(), K.data(), Dqk, keys, shape.softmax_scale, softcap, sink,
                                         s.data(), p.data());
      std::fill(out_i.begin(), out_i.end(), 0.0);
      for (int64_t j = keys.begin; j < keys.end; ++j)
        for (int64_t d = 0; d < Dv; ++d) out_i[d] += p[j] * V[j * Dv + d];
      store_row(args.out.dtype, args.out.data, map.q_row(args.out, b, i, h), Dv, out_i.data());
      if (write_lse) static_cast<float*>(args.lse.data)[map.lse_index(args.lse, b, h, i)] = float(row.lse);
    }
  });
  return FLASH4_OK;
}

}  // namespace flash4::detail
