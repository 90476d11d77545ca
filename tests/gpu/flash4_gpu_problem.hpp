// One attention problem run twice through flash4's C ABI: on the GPU (FLASH4_CUDA, 16-bit
// inputs) and on the CPU float64 reference (FLASH4_CPU, FLASH4_F64 tensors holding the
// very same values in the very same memory layout), then compared. GPU outputs are
// poisoned with NaN before each call so unwritten elements show; fresh random inputs
// come from the run's printed seed (ADEPT_TEST_SEED replays it).
#pragma once

#include <cuda_runtime.h>
#include <flash4/flash4.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "reference/numeric.hpp"

namespace flash4_gpu {

#define FLASH4_TEST_CUDA(call)                                                                                  \
  do {                                                                                                           \
    cudaError_t status_ = (call);                                                                                \
    ASSERT_EQ(status_, cudaSuccess) << #call << " at " << __FILE__ << ":" << __LINE__ << ": "                    \
                                    << cudaGetErrorString(status_);                                              \
  } while (0)

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// Device memory of `bytes`, freed on scope exit.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(size_t bytes) : bytes_(bytes) {
    if (cudaMalloc(&ptr_, std::max<size_t>(bytes, 16)) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceMemory() { cudaFree(ptr_); }
  DeviceMemory(DeviceMemory&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(o.bytes_) {}
  DeviceMemory& operator=(DeviceMemory&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A tensor stored twice: 16-bit bits on the GPU and float64 values (same layout) on the
// host. `view` carries the shape and strides; its data/dtype are filled per call.
struct Twin {
  flash4_tensor view{};
  int64_t storage = 0;          // elements of the backing storage
  std::vector<double> host;     // float64 values (inputs: exactly the 16-bit values)
  DeviceMemory device;          // 16-bit (or fp32 for lse) storage
  int element_bytes = 2;

  flash4_tensor gpu(flash4_dtype dtype) const {
    flash4_tensor t = view;
    t.data = device.get();
    t.dtype = dtype;
    return t;
  }
  flash4_tensor cpu() {
    flash4_tensor t = view;
    t.data = host.data();
    t.dtype = FLASH4_F64;
    return t;
  }
};

inline Twin make_twin(std::vector<int64_t> shape, std::vector<int64_t> stride, int64_t storage, int element_bytes) {
  Twin t;
  t.view.rank = int(shape.size());
  for (int d = 0; d < t.view.rank; ++d) t.view.shape[d] = shape[d], t.view.stride[d] = stride[d];
  t.storage = storage;
  t.element_bytes = element_bytes;
  t.host.assign(size_t(storage), 0.0);
  t.device = DeviceMemory(size_t(storage) * element_bytes);
  return t;
}

// A contiguous (row-major) device tensor of `shape` in `dtype` (16-bit, or FLASH4_F32) and
// its flash4 view, for the tests that need device buffers without host twins.
struct DeviceTensor {
  flash4_tensor view{};
  DeviceMemory memory;
};
inline DeviceTensor contiguous_tensor(const std::vector<int64_t>& shape, flash4_dtype dtype) {
  DeviceTensor t;
  t.view.dtype = dtype;
  t.view.rank = int(shape.size());
  int64_t stride = 1;
  for (int i = t.view.rank - 1; i >= 0; --i) {
    t.view.shape[i] = shape[i], t.view.stride[i] = stride;
    stride *= shape[i];
  }
  t.memory = DeviceMemory(size_t(stride) * (dtype == FLASH4_F32 ? 4 : 2));
  t.view.data = t.memory.get();
  return t;
}

inline uint16_t to_bits(double x, flash4_dtype dtype) {
  return dtype == FLASH4_BF16 ? flash4::detail::f64_to_bf16_bits(x) : flash4::detail::f64_to_f16_bits(x);
}
inline double from_bits(uint16_t b, flash4_dtype dtype) {
  return dtype == FLASH4_BF16 ? flash4::detail::bf16_bits_to_f32(b) : flash4::detail::f16_bits_to_f32(b);
}

// Random N(0, scale^2) values rounded to dtype, in host (float64) and on the device.
inline void fill_random(Twin& t, flash4_dtype dtype, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<uint16_t> bits(size_t(t.storage));
  for (int64_t i = 0; i < t.storage; ++i) {
    bits[i] = to_bits(normal(rng), dtype);
    t.host[i] = from_bits(bits[i], dtype);
  }
  cudaMemcpy(t.device.get(), bits.data(), bits.size() * 2, cudaMemcpyHostToDevice);
}

inline void poison(Twin& t) { cudaMemset(t.device.get(), 0xFF, size_t(t.storage) * t.element_bytes); }

// The device storage widened to double (fp32 when element_bytes == 4).
inline std::vector<double> download(const Twin& t, flash4_dtype dtype) {
  std::vector<double> out(size_t(t.storage));
  if (t.element_bytes == 4) {
    std::vector<float> f(out.size());
    cudaMemcpy(f.data(), t.device.get(), f.size() * 4, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < f.size(); ++i) out[i] = f[i];
  } else {
    std::vector<uint16_t> b(out.size());
    cudaMemcpy(b.data(), t.device.get(), b.size() * 2, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < b.size(); ++i) out[i] = from_bits(b[i], dtype);
  }
  return out;
}

template <class T>
DeviceMemory upload(const std::vector<T>& v) {
  DeviceMemory m(v.size() * sizeof(T));
  if (!v.empty()) cudaMemcpy(m.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  return m;
}

// Storage offsets of every logical row (all indices but the last) of a view, in
// row-major logical order; each row's last-dimension elements are contiguous.
inline std::vector<int64_t> row_offsets(const flash4_tensor& v) {
  std::vector<int64_t> offsets;
  const int outer = v.rank - 1;
  int64_t rows = 1;
  for (int d = 0; d < outer; ++d) rows *= v.shape[d];
  offsets.reserve(size_t(rows));
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rest = r, offset = 0;
    for (int d = outer - 1; d >= 0; --d) {
      offset += (rest % v.shape[d]) * v.stride[d];
      rest /= v.shape[d];
    }
    offsets.push_back(offset);
  }
  return offsets;
}

// 1 for the storage elements a view covers (padding between rows: 0).
inline std::vector<char> logical_elements(const flash4_tensor& v, int64_t storage) {
  std::vector<char> use(size_t(storage), 0);
  const int64_t width = v.shape[v.rank - 1];
  for (int64_t o : row_offsets(v))
    for (int64_t i = 0; i < width; ++i) use[size_t(o + i)] = 1;
  return use;
}

inline double norm2(const double* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  return std::sqrt(s);
}

// The first element where a and b differ, -1 when they are the same bits (memcmp): the
// bit-identity checks of the deterministic and scheduling suites.
template <typename Bits>
int64_t first_difference(const std::vector<Bits>& a, const std::vector<Bits>& b) {
  if (a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(Bits)) == 0) return -1;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    if (a[i] != b[i]) return int64_t(i);
  return int64_t(std::min(a.size(), b.size()));
}

// ||a - r|| / ||r|| over the elements selected by `use` (all when empty); a NaN in a
// selected element makes it NaN.
inline double relative_error(const std::vector<double>& a, const std::vector<double>& r,
                             const std::vector<char>& use = {}) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!use.empty() && !use[i]) continue;
    if (std::isnan(a[i])) return std::numeric_limits<double>::quiet_NaN();
    num += (a[i] - r[i]) * (a[i] - r[i]);
    den += r[i] * r[i];
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

// ----------------------------------------------------------------------------------------
// The problem.
struct Problem {
  std::string label;
  flash4_dtype dtype = FLASH4_BF16;
  int B = 1, Hq = 2, Hkv = 1, Dqk = 128, Dv = 128;
  int Sq = 128, Sk = 128;                     // dense extents
  std::vector<std::pair<int, int>> seqs;      // varlen (q, k) lengths when not empty
  std::vector<int> seqused;                   // seqused_k per sequence (optional)
  int pad_q = 0, pad_k = 0;                   // varlen: tokens after the last sequence
  bool bhsd = false;                          // dense memory order [B, H, S, D]
  int row_pad = 0;                            // extra elements after each token row (BSHD, packed)
  int page_size = 0;                          // > 0: paged K/V (forward only)
  bool causal = false;
  int window_left = -1, window_right = -1;
  float softcap = 0;
  bool sink = false;
  bool deterministic = false;
  bool backward = true;
  // With seqused: NaN in every K / V row a sequence owns past its seqused_k keys (a cache's
  // unwritten slots), so that an output or gradient that reads one shows (P = dS = 0 there,
  // but 0 * NaN is NaN).
  bool nan_unused_keys = false;
  double q_scale = 1.0;  // input magnitude of q (large logits exercise rescaling)
  flash4_tuning tuning{};

  bool varlen() const { return !seqs.empty(); }
  bool paged() const { return page_size > 0; }
  int batch() const { return varlen() ? int(seqs.size()) : B; }
  int key_count(int b) const {  // keys attended by sequence b
    if (!seqused.empty()) return seqused[b];
    return varlen() ? seqs[b].second : Sk;
  }

  std::string describe() const {
    std::ostringstream s;
    s << (label.empty() ? "" : label + ": ") << (dtype == FLASH4_BF16 ? "bf16" : "fp16") << " d=" << Dqk;
    if (Dv != Dqk) s << "/" << Dv;
    s << " Hq=" << Hq << " Hkv=" << Hkv;
    if (varlen()) {
      s << " varlen[";
      for (size_t b = 0; b < seqs.size(); ++b) s << (b ? "," : "") << seqs[b].first << "x" << seqs[b].second;
      s << "]";
    } else {
      s << " B=" << B << " Sq=" << Sq << " Sk=" << Sk << (bhsd ? " BHSD" : " BSHD");
    }
    if (row_pad) s << " row_pad=" << row_pad;
    if (!seqused.empty()) s << " seqused_k" << (nan_unused_keys ? " (NaN past)" : "");
    if (paged()) s << " paged(" << page_size << ")";
    if (causal) s << " causal";
    if (window_left >= 0 || window_right >= 0) s << " window(" << window_left << "," << window_right << ")";
    if (softcap > 0) s << " softcap=" << softcap;
    if (sink) s << " sink";
    if (deterministic) s << " deterministic";
    if (tuning.exp2_emulation) s << " exp2_emulation=" << tuning.exp2_emulation;
    if (tuning.rescale_threshold != 0) s << " tau=" << tuning.rescale_threshold;
    return s.str();
  }
};

// Tolerances from the arithmetic: P and the outputs are rounded to 16 bits once.
struct Tolerance {
  double out, lse_abs, grad;
};
inline Tolerance tolerance_for(flash4_dtype dtype) {
  return dtype == FLASH4_BF16 ? Tolerance{1e-2, 2e-3, 2.5e-2} : Tolerance{2e-3, 2e-3, 5e-3};
}

struct Errors {
  double out = 0, lse = 0, dq = 0, dk = 0, dv = 0, dsink = 0;
  // The part of dq / dk error that rounding `out` to 16 bits explains (relative to
  // ||ref||): D = dO . O uses the stored O, so dS = P (dP - D) carries dD_i, a sum of d_v
  // independent roundings: |dD_i| ~ (u / sqrt 3) |dO_i| |O_i| / sqrt(d_v), allowed 3x
  // that; dq_i then gains scale |dD_i| max_j |k_j| (dk likewise with q). It matters where
  // the true dS is ~0 (rows that see a single key), and is small elsewhere.
  double dq_slack = 0, dk_slack = 0;
  // The same for dsink_h = -sum_i P_sink,i D_i over head h's rows (P_sink,i = exp(sink_h -
  // lse_i)): the rows' independent dD_i give sqrt(sum_i (P_sink,i |dD_i|)^2), relative to
  // ||ref dsink||. Few rows whose D_i cancel (Sq = 17) make it the larger part.
  double dsink_slack = 0;
};

// Runs `p` on both devices and checks it; returns the errors for callers that compare
// further (e.g. two tunings). `keep` receives the GPU outputs when not null.
struct GpuOutputs {
  std::vector<double> out, lse, dq, dk, dv;
};

class ProblemRunner {
 public:
  ProblemRunner(const Problem& p, std::mt19937_64& rng) : p_(p), rng_(rng) {}

  // Builds layouts and inputs; returns false (with a gtest failure) on setup errors.
  void setup() {
    const Problem& p = p_;
    const int64_t Hq = p.Hq, Hkv = p.Hkv, Dqk = p.Dqk, Dv = p.Dv;
    if (p.varlen()) {
      cu_q_ = {0};
      cu_k_ = {0};
      for (auto [sq, sk] : p.seqs) {
        cu_q_.push_back(cu_q_.back() + sq);
        cu_k_.push_back(cu_k_.back() + sk);
      }
      Tq_ = cu_q_.back() + p.pad_q;
      Tk_ = cu_k_.back() + p.pad_k;
      q_ = packed(Tq_, Hq, Dqk);
      out_ = packed(Tq_, Hq, Dv);
      dout_ = packed(Tq_, Hq, Dv);
      dq_ = packed(Tq_, Hq, Dqk);
      lse_ = make_twin({Hq, Tq_}, {Tq_, 1}, Hq * Tq_, 4);
    } else {
      const int64_t B = p.B, Sq = p.Sq;
      q_ = dense(B, Sq, Hq, Dqk);
      out_ = dense(B, Sq, Hq, Dv);
      dout_ = dense(B, Sq, Hq, Dv);
      dq_ = dense(B, Sq, Hq, Dqk);
      lse_ = make_twin({B, Hq, Sq}, {Hq * Sq, Sq, 1}, B * Hq * Sq, 4);
      Tq_ = B * Sq;
    }
    if (p.paged()) {
      // Pages of every sequence shuffled over one pool (plus one spare page).
      const int batch = p.batch();
      int max_keys = 0;
      for (int b = 0; b < batch; ++b) max_keys = std::max(max_keys, p.key_count(b));
      pages_per_seq_ = std::max(1, (max_keys + p.page_size - 1) / p.page_size);
      const int64_t pages = int64_t(batch) * pages_per_seq_ + 1;
      std::vector<int32_t> order(static_cast<size_t>(pages));
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng_);
      page_table_.assign(order.begin(), order.begin() + int64_t(batch) * pages_per_seq_);
      const int64_t ps = p.page_size;
      k_ = make_twin({pages, ps, Hkv, Dqk}, {ps * Hkv * Dqk, Hkv * Dqk, Dqk, 1}, pages * ps * Hkv * Dqk, 2);
      v_ = make_twin({pages, ps, Hkv, Dv}, {ps * Hkv * Dv, Hkv * Dv, Dv, 1}, pages * ps * Hkv * Dv, 2);
      used_ = std::vector<int32_t>(size_t(batch));
      for (int b = 0; b < batch; ++b) used_[b] = p.key_count(b);
    } else if (p.varlen()) {
      k_ = packed(Tk_, Hkv, Dqk);
      v_ = packed(Tk_, Hkv, Dv);
      dk_ = packed(Tk_, Hkv, Dqk);
      dv_ = packed(Tk_, Hkv, Dv);
    } else {
      k_ = dense(p.B, p.Sk, Hkv, Dqk);
      v_ = dense(p.B, p.Sk, Hkv, Dv);
      dk_ = dense(p.B, p.Sk, Hkv, Dqk);
      dv_ = dense(p.B, p.Sk, Hkv, Dv);
    }
    if (!p.seqused.empty()) used_.assign(p.seqused.begin(), p.seqused.end());

    fill_random(q_, p.dtype, rng_, p.q_scale);
    fill_random(k_, p.dtype, rng_);
    fill_random(v_, p.dtype, rng_);
    if (p.nan_unused_keys && !p.seqused.empty()) {
      nan_unused_key_rows(k_);
      nan_unused_key_rows(v_);
    }
    fill_random(dout_, p.dtype, rng_);
    if (p.sink) {
      std::normal_distribution<double> normal(0.0, 1.0);
      sink_.resize(size_t(p.Hq));
      for (float& s : sink_) s = float(normal(rng_));
    }
    d_cu_q_ = upload(cu_q_);
    d_cu_k_ = upload(cu_k_);
    d_used_ = upload(used_);
    d_pages_ = upload(page_table_);
    d_sink_ = upload(sink_);
  }

  // Forward on both devices; checks status, coverage, out and lse.
  // The implementation that ran the GPU forward ("portable" or "hopper").
  const std::string& gpu_backend() const { return gpu_backend_; }

  // The implementation that ran the last GPU backward.
  const std::string& gpu_backward_backend() const { return gpu_backward_backend_; }

  void forward(Errors& errors, GpuOutputs* keep = nullptr) {
    const Problem& p = p_;
    poison(out_);
    poison(lse_);
    flash4_forward_args a;
    flash4_forward_args_init(&a);
    a.device = FLASH4_CUDA;
    a.q = q_.gpu(p.dtype), a.k = k_.gpu(p.dtype), a.v = v_.gpu(p.dtype), a.out = out_.gpu(p.dtype);
    a.lse = lse_.gpu(FLASH4_F32);
    bind(a.options, a.varlen, /*gpu=*/true);
    if (p.paged()) {
      a.paged.page_table = static_cast<const int32_t*>(d_pages_.get());
      a.paged.max_pages_per_seq = pages_per_seq_;
      a.paged.page_size = p.page_size;
    }
    a.tuning = p.tuning;
    const flash4_status status = flash4_forward(&a);
    ASSERT_EQ(status, FLASH4_OK) << flash4_last_error();
    gpu_backend_ = flash4_last_backend();  // the Hopper kernels where they cover p, else portable
    ASSERT_TRUE(gpu_backend_ == "portable" || gpu_backend_ == "hopper") << gpu_backend_;
    FLASH4_TEST_CUDA(cudaDeviceSynchronize());
    const std::vector<double> out = download(out_, p.dtype), lse = download(lse_, FLASH4_F32);

    // Reference: same layout, float64.
    flash4_forward_args r = a;
    r.device = FLASH4_CPU;
    r.stream = nullptr;
    r.q = q_.cpu(), r.k = k_.cpu(), r.v = v_.cpu();
    ref_out_.assign(out_.storage, std::numeric_limits<double>::quiet_NaN());
    ref_lse_.assign(size_t(lse_.storage), std::numeric_limits<double>::quiet_NaN());
    r.out = out_.view;
    r.out.data = ref_out_.data();
    r.out.dtype = FLASH4_F64;
    std::vector<float> ref_lse_f(size_t(lse_.storage), std::numeric_limits<float>::quiet_NaN());
    r.lse = lse_.view;
    r.lse.data = ref_lse_f.data();
    r.lse.dtype = FLASH4_F32;
    bind(r.options, r.varlen, /*gpu=*/false);
    if (p.paged()) r.paged.page_table = page_table_.data();
    ASSERT_EQ(flash4_forward(&r), FLASH4_OK) << flash4_last_error();
    for (size_t i = 0; i < ref_lse_f.size(); ++i) ref_lse_[i] = ref_lse_f[i];

    // Rows of no sequence must stay untouched (NaN); every other element written.
    const std::vector<char> out_rows = covered_q_rows(out_);
    const std::vector<char> lse_rows = covered_lse();
    for (size_t i = 0; i < out.size(); ++i) {
      if (out_rows[i] == 1) {
        ASSERT_FALSE(std::isnan(out[i])) << "out element " << i << " was not written";
      } else {
        ASSERT_TRUE(std::isnan(out[i])) << "out element " << i << " belongs to no sequence row but was written";
      }
    }
    double lse_err = 0;
    for (size_t i = 0; i < lse.size(); ++i) {
      if (!lse_rows[i]) {
        ASSERT_TRUE(std::isnan(lse[i])) << "lse element " << i << " belongs to no sequence but was written";
        continue;
      }
      ASSERT_FALSE(std::isnan(lse[i])) << "lse element " << i << " was not written";
      if (std::isinf(ref_lse_[i])) {
        ASSERT_EQ(lse[i], ref_lse_[i]) << "lse element " << i;
      } else {
        lse_err = std::max(lse_err, std::fabs(lse[i] - ref_lse_[i]));
      }
    }
    std::vector<char> in_sequence(out_rows.size());
    for (size_t i = 0; i < out_rows.size(); ++i) in_sequence[i] = out_rows[i] == 1;
    errors.out = relative_error(out, ref_out_, in_sequence);
    errors.lse = lse_err;
    gpu_out_ = out;
    if (keep != nullptr) {
      keep->out = out;
      keep->lse = lse;
    }
  }

  // Backward on both devices (after forward()); every gradient element must be written.
  void backward(Errors& errors, GpuOutputs* keep = nullptr) {
    const Problem& p = p_;
    poison(dq_);
    poison(dk_);
    poison(dv_);
    DeviceMemory d_dsink(std::max<size_t>(sink_.size(), 1) * 4);
    cudaMemset(d_dsink.get(), 0xFF, d_dsink.bytes());
    flash4_backward_args a;
    flash4_backward_args_init(&a);
    a.device = FLASH4_CUDA;
    a.q = q_.gpu(p.dtype), a.k = k_.gpu(p.dtype), a.v = v_.gpu(p.dtype), a.out = out_.gpu(p.dtype);
    a.dout = dout_.gpu(p.dtype), a.lse = lse_.gpu(FLASH4_F32);
    a.dq = dq_.gpu(p.dtype), a.dk = dk_.gpu(p.dtype), a.dv = dv_.gpu(p.dtype);
    bind(a.options, a.varlen, /*gpu=*/true);
    a.dsink = p.sink ? static_cast<float*>(d_dsink.get()) : nullptr;
    a.deterministic = p.deterministic;
    const flash4_status status = flash4_backward(&a);
    ASSERT_EQ(status, FLASH4_OK) << flash4_last_error();
    gpu_backward_backend_ = flash4_last_backend();
    FLASH4_TEST_CUDA(cudaDeviceSynchronize());
    const std::vector<double> dq = download(dq_, p.dtype), dk = download(dk_, p.dtype), dv = download(dv_, p.dtype);

    flash4_backward_args r = a;
    r.device = FLASH4_CPU;
    r.stream = nullptr;
    r.q = q_.cpu(), r.k = k_.cpu(), r.v = v_.cpu(), r.dout = dout_.cpu();
    r.out = out_.view;
    r.out.data = ref_out_.data();
    r.out.dtype = FLASH4_F64;
    std::vector<float> ref_lse_f(ref_lse_.begin(), ref_lse_.end());
    r.lse = lse_.view;
    r.lse.data = ref_lse_f.data();
    r.lse.dtype = FLASH4_F32;
    std::vector<double> rdq(static_cast<size_t>(dq_.storage)), rdk(static_cast<size_t>(dk_.storage)),
        rdv(static_cast<size_t>(dv_.storage));
    r.dq = dq_.view, r.dq.data = rdq.data(), r.dq.dtype = FLASH4_F64;
    r.dk = dk_.view, r.dk.data = rdk.data(), r.dk.dtype = FLASH4_F64;
    r.dv = dv_.view, r.dv.data = rdv.data(), r.dv.dtype = FLASH4_F64;
    std::vector<float> rdsink(sink_.size());
    r.dsink = p.sink ? rdsink.data() : nullptr;
    bind(r.options, r.varlen, /*gpu=*/false);
    ASSERT_EQ(flash4_backward(&r), FLASH4_OK) << flash4_last_error();

    const std::vector<char> q_elems = logical_elements(dq_.view, dq_.storage);
    const std::vector<char> k_elems = logical_elements(dk_.view, dk_.storage);
    const std::vector<char> v_elems = logical_elements(dv_.view, dv_.storage);
    for (auto [g, use, name] : {std::tuple{&dq, &q_elems, "dq"}, std::tuple{&dk, &k_elems, "dk"},
                                std::tuple{&dv, &v_elems, "dv"}})
      for (size_t i = 0; i < g->size(); ++i)
        if ((*use)[i]) ASSERT_FALSE(std::isnan((*g)[i])) << name << " element " << i << " was not written";
    errors.dq = relative_error(dq, rdq, q_elems);
    errors.dk = relative_error(dk, rdk, k_elems);
    errors.dv = relative_error(dv, rdv, v_elems);
    // Rounding slack (see Errors): 3 (u / sqrt 3) sqrt(sum_i (|dO_i| |O_i|)^2 / d_v) times
    // scale and max |k| or |q|.
    const double u = (p.dtype == FLASH4_BF16 ? 1.0 / 256 : 1.0 / 2048) * std::sqrt(3.0 / double(p.Dv));
    const double scale = 1.0 / std::sqrt(double(p.Dqk));
    double dd = 0, dd_sink = 0;
    {
      const std::vector<int64_t> o_rows = row_offsets(out_.view), g_rows = row_offsets(dout_.view);
      for (size_t r = 0; r < o_rows.size(); ++r) {
        if (std::isnan(gpu_out_[size_t(o_rows[r])])) continue;  // a row of no sequence
        const double x = u * norm2(&gpu_out_[size_t(o_rows[r])], p.Dv) * norm2(&dout_.host[size_t(g_rows[r])], p.Dv);
        dd += x * x;
        if (p.sink) {
          // Rows run over (token, head), head fastest; lse is [Hq][Tq] packed, else [B][Hq][Sq].
          const int64_t h = int64_t(r) % p.Hq, t = int64_t(r) / p.Hq;
          const int64_t l = p.varlen() ? h * Tq_ + t : (t / p.Sq * p.Hq + h) * p.Sq + t % p.Sq;
          const double p_sink = std::exp(double(sink_[size_t(h)]) - ref_lse_[size_t(l)]);
          if (std::isfinite(p_sink)) dd_sink += (p_sink * x) * (p_sink * x);
        }
      }
    }
    auto max_row_norm = [](const Twin& t) {
      double m = 0;
      for (int64_t o : row_offsets(t.view)) {
        const double n = norm2(&t.host[size_t(o)], t.view.shape[t.view.rank - 1]);
        if (!std::isnan(n)) m = std::max(m, n);  // NaN rows: keys no query uses (nan_unused_keys)
      }
      return m;
    };
    auto ref_norm = [](const std::vector<double>& r, const std::vector<char>& use) {
      double s = 0;
      for (size_t i = 0; i < r.size(); ++i) s += use[i] ? r[i] * r[i] : 0.0;
      return std::sqrt(s);
    };
    const double floor_dq = scale * std::sqrt(dd) * max_row_norm(k_);
    const double floor_dk = scale * std::sqrt(dd) * max_row_norm(q_);
    const double n_dq = ref_norm(rdq, q_elems), n_dk = ref_norm(rdk, k_elems);
    errors.dq_slack = n_dq > 0 ? floor_dq / n_dq : floor_dq;
    errors.dk_slack = n_dk > 0 ? floor_dk / n_dk : floor_dk;
    if (p.sink) {
      std::vector<float> dsink(sink_.size());
      cudaMemcpy(dsink.data(), d_dsink.get(), dsink.size() * 4, cudaMemcpyDeviceToHost);
      errors.dsink = relative_error(std::vector<double>(dsink.begin(), dsink.end()),
                                    std::vector<double>(rdsink.begin(), rdsink.end()));
      double n_dsink = 0;
      for (float x : rdsink) n_dsink += double(x) * x;
      errors.dsink_slack = n_dsink > 0 ? std::sqrt(dd_sink / n_dsink) : std::sqrt(dd_sink);
    }
    if (keep != nullptr) {
      keep->dq = dq;
      keep->dk = dk;
      keep->dv = dv;
    }
  }

 private:
  // Problem::nan_unused_keys: rows [seqused_k[b], own rows) of sequence b, every head, -> NaN
  // on the host and the device (the reference reads only the keys used). Paged: the slots past
  // seqused_k[b] of the pages in b's row of the page table (each page belongs to one sequence).
  void nan_unused_key_rows(Twin& t) {
    const Problem& p = p_;
    const flash4_tensor& v = t.view;
    const int64_t H = v.shape[v.rank - 2], D = v.shape[v.rank - 1];
    for (int b = 0; b < p.batch(); ++b) {
      const int own = p.paged() ? int(pages_per_seq_) * p.page_size : p.varlen() ? p.seqs[b].second : p.Sk;
      for (int j = p.key_count(b); j < own; ++j)
        for (int64_t h = 0; h < H; ++h) {
          int64_t offset;
          if (p.paged()) {
            const int64_t page = page_table_[size_t(b * pages_per_seq_ + j / p.page_size)];
            offset = page * v.stride[0] + (j % p.page_size) * v.stride[1] + h * v.stride[2];
          } else {
            offset = p.varlen() ? (cu_k_[b] + j) * v.stride[0] + h * v.stride[1]
                                : b * v.stride[0] + j * v.stride[1] + h * v.stride[2];
          }
          for (int64_t d = 0; d < D; ++d) t.host[size_t(offset + d)] = std::numeric_limits<double>::quiet_NaN();
          cudaMemset(static_cast<uint16_t*>(t.device.get()) + offset, 0xFF, size_t(D) * 2);
        }
    }
  }

  Twin dense(int64_t B, int64_t S, int64_t H, int64_t D) const {
    if (p_.bhsd) return make_twin({B, S, H, D}, {H * S * D, D, S * D, 1}, B * S * H * D, 2);
    const int64_t row = H * D + p_.row_pad;
    return make_twin({B, S, H, D}, {S * row, row, D, 1}, B * S * row, 2);
  }
  Twin packed(int64_t T, int64_t H, int64_t D) const {
    const int64_t row = H * D + p_.row_pad;
    return make_twin({T, H, D}, {row, D, 1}, T * row, 2);
  }

  void bind(flash4_options& o, flash4_varlen& vl, bool gpu) {
    const Problem& p = p_;
    o.causal = p.causal;
    o.window_left = p.window_left;
    o.window_right = p.window_right;
    o.softcap = p.softcap;
    o.sink = p.sink ? (gpu ? static_cast<const float*>(d_sink_.get()) : sink_.data()) : nullptr;
    vl = flash4_varlen{};
    if (p.varlen()) {
      vl.cu_seqlens_q = gpu ? static_cast<const int32_t*>(d_cu_q_.get()) : cu_q_.data();
      if (!p.paged()) vl.cu_seqlens_k = gpu ? static_cast<const int32_t*>(d_cu_k_.get()) : cu_k_.data();
      vl.batch = p.batch();
      int mq = 0, mk = 0;
      for (auto [sq, sk] : p.seqs) mq = std::max(mq, sq), mk = std::max(mk, sk);
      vl.max_seqlen_q = mq;
      vl.max_seqlen_k = p.paged() ? 0 : mk;
    }
    if (!used_.empty()) {
      vl.seqused_k = gpu ? static_cast<const int32_t*>(d_used_.get()) : used_.data();
      vl.batch = p.batch();
    }
  }

  // Per storage element of a q-like tensor: 1 = in a sequence (must be written),
  // 0 = a row of no sequence (the forward must leave it), 2 = padding between rows.
  std::vector<char> covered_q_rows(const Twin& t) const {
    std::vector<char> use(size_t(t.storage), 2);
    const std::vector<int64_t> rows = row_offsets(t.view);
    const int64_t width = t.view.shape[t.view.rank - 1], per_token = p_.Hq;
    for (size_t r = 0; r < rows.size(); ++r) {
      const bool in = !p_.varlen() || int64_t(r) / per_token < cu_q_.back();
      for (int64_t i = 0; i < width; ++i) use[size_t(rows[r] + i)] = in;
    }
    return use;
  }
  std::vector<char> covered_lse() const {
    std::vector<char> use(size_t(lse_.storage), 1);
    if (!p_.varlen()) return use;
    for (int64_t h = 0; h < p_.Hq; ++h)
      for (int64_t tok = 0; tok < Tq_; ++tok) use[size_t(h * Tq_ + tok)] = tok < cu_q_.back();
    return use;
  }

  Problem p_;
  std::string gpu_backend_;  // flash4_last_backend() after the GPU forward
  std::string gpu_backward_backend_;  // ... and after the GPU backward
  std::mt19937_64& rng_;
  Twin q_, k_, v_, out_, lse_, dout_, dq_, dk_, dv_;
  int64_t Tq_ = 0, Tk_ = 0;
  std::vector<int32_t> cu_q_, cu_k_, used_, page_table_;
  std::vector<float> sink_;
  int64_t pages_per_seq_ = 0;
  DeviceMemory d_cu_q_, d_cu_k_, d_used_, d_pages_, d_sink_;
  std::vector<double> ref_out_, ref_lse_, gpu_out_;
};

}  // namespace flash4_gpu
