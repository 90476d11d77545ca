// CPU reference layers of the decoder: one forward/backward pair per layer, llm.c style,
// with shapes in the argument names. T is float (training) or double (gradient checks).
// Backward functions ACCUMULATE (+=) into parameter gradients and OVERWRITE input
// gradients unless stated; a null parameter-gradient pointer means "frozen: skip".
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace adept::cpu {

// out[N][C] = wte[ids[n]][C]
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* wte, int64_t N, int64_t C);
// dwte[ids[n]] += dout[n]; deterministic (rows are visited in token order).
template <typename T>
void embedding_backward(T* dwte, const T* dout, const int32_t* ids, int64_t N, int64_t C);

// out[N][C] = in[n] * rstd[n] * weight, rstd[n] = 1/sqrt(mean(in[n]^2) + eps)
template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* in, const T* weight, int64_t N, int64_t C, double eps);
// din (overwritten), dweight (accumulated, may be null)
template <typename T>
void rmsnorm_backward(T* din, T* dweight, const T* dout, const T* in, const T* weight, const T* rstd, int64_t N,
                      int64_t C);

// out[N][OC] = in[N][IC] · weight[OC][IC]ᵀ + bias[OC] (bias may be null)
template <typename T>
void linear_forward(T* out, const T* in, const T* weight, const T* bias, int64_t N, int64_t IC, int64_t OC);
// din (overwritten, may be null), dweight and dbias accumulated (each may be null)
template <typename T>
void linear_backward(T* din, T* dweight, T* dbias, const T* dout, const T* in, const T* weight, int64_t N,
                     int64_t IC, int64_t OC);

// Rotary tables for positions 0..max_positions-1: cos/sin[max_positions][D/2], computed in
// float64 from the (possibly Llama-3-scaled) inverse frequencies.
struct RopeTable {
  int64_t half_dim = 0;
  std::vector<double> cos, sin;
};
struct RopeSpec {
  int64_t head_dim = 0;
  double theta = 10000.0;
  std::string_view scaling_type;  // "", "llama3", "linear"
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};
std::vector<double> rope_inverse_frequencies(const RopeSpec& spec);
RopeTable rope_table(const RopeSpec& spec, int64_t max_positions);

// In place on x[N][H][D], rotate_half convention (pairs i, i + D/2), position pos[n].
template <typename T>
void rope_forward(T* x, const int32_t* pos, const RopeTable& table, int64_t N, int64_t H, int64_t D);
// In place: dx = Rᵀ dout (the inverse rotation).
template <typename T>
void rope_backward(T* dx, const int32_t* pos, const RopeTable& table, int64_t N, int64_t H, int64_t D);

// out[N][C] = silu(gate) * up
template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t N, int64_t C);
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t N, int64_t C);

// Cross-entropy of logits[N][V] against targets[N], skipping targets == ignore_index.
// When dlogits is non-null it is overwritten with grad_scale · (softmax − onehot) on
// counted rows and 0 on ignored rows; grad_scale = 1/count gives d(mean loss)/dlogits.
struct CrossEntropyResult {
  double loss = 0.0;     // mean over counted targets (0 when count == 0)
  int64_t count = 0;     // targets counted
  double loss_sum = 0.0; // sum over counted targets
};
template <typename T>
CrossEntropyResult cross_entropy(T* dlogits, const T* logits, const int32_t* targets, int64_t N, int64_t V,
                                 int32_t ignore_index, double grad_scale);

// a += b, elementwise
template <typename T>
void add_inplace(T* a, const T* b, int64_t n);

}  // namespace adept::cpu
