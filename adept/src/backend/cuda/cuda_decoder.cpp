#include "backend/cuda/cuda_decoder.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <map>

#include "backend/cuda/attention.hpp"
#include "backend/cuda/cuda_check.hpp"
#include "backend/cuda/data_parallel_kernels.hpp"
#include "backend/cuda/device_arena.hpp"
#include "backend/cuda/gemm.hpp"
#include "core/error.hpp"
#include "dist/communicator.hpp"
#include "dist/shard_plan.hpp"
#include "ops/cuda/ops.hpp"

namespace adept {

using cuda::bf16;

namespace {

constexpr int64_t kAdamWChunk = 32768;                 // elements per AdamW block
constexpr size_t kGemmWorkspace = size_t(32) << 20;    // cuBLASLt's Hopper kernels want 32 MiB
// bf16 logits of one chunk, overwritten in place by dlogits: 2093 tokens at V = 128256
// (there were 1046 with fp32 logits and a separate dlogits, 768 MiB). Fewer chunks also
// mean fewer passes of the head's weight gradient, dW[V][C] += dlogitsᵀ · h, each of
// which reads and writes all of dW in fp32.
constexpr size_t kLogitsBudget = size_t(512) << 20;
constexpr size_t kMaxGraphs = 16;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// One parameter tensor: where its bf16 weights and (when trainable) its fp32 master,
// gradient and moments live.
struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  bool weight_decay = true;
  bool trainable = true;
  int64_t weight_offset = 0;  // elements into the bf16 weights
  int64_t state_offset = -1;  // elements into master / grads / m / v; -1 = frozen
  // Data parallel: the tensor's place in the flat state layout, which the bf16 weights
  // mirror (-1: outside it, a frozen tensor of a frozen group); a frozen member of a
  // group that trains has a place (a zero hole in the state) but no state_offset.
  int64_t flat_offset = -1;
  int64_t row_multiplier_offset = -1;
  float lr_multiplier = 1.0f;
  std::vector<float> row_multiplier;
};

// Tensor indices of one layer (-1 when absent), as Decoder's LayerParams.
struct Layer {
  int input_norm = -1, q = -1, k = -1, v = -1, o = -1;
  int q_bias = -1, k_bias = -1, v_bias = -1, o_bias = -1;
  int q_norm = -1, k_norm = -1;
  int post_norm = -1, gate = -1, up = -1, down = -1;
  std::vector<int> all() const {
    std::vector<int> out;
    for (int i : {input_norm, q, k, v, o, q_bias, k_bias, v_bias, o_bias, q_norm, k_norm, post_norm, gate, up, down})
      if (i >= 0) out.push_back(i);
    return out;
  }
};

// Saved activations of one layer (x, its input, is the previous layer's output).
struct LayerActivations {
  bf16* x2 = nullptr;       // residual after attention [N][C]
  bf16* h1 = nullptr;       // input_layernorm output [N][C] (shared scratch when recomputing)
  bf16* h2 = nullptr;       // post_attention_layernorm output [N][C] (idem)
  bf16* qkv = nullptr;      // attention inputs after q/k norm and RoPE [N][Q+2KV]
  bf16* qkv_raw = nullptr;  // projections before q/k norm (Qwen3 only)
  bf16* attn = nullptr;     // attention output [N][Q]
  bf16* gateup = nullptr;   // gate|up projection [N][2I]
  bf16* act = nullptr;      // SwiGLU output [N][I] (shared scratch when recomputing)
  float* rstd1 = nullptr;
  float* rstd2 = nullptr;
  float* rstd_qk = nullptr;  // [N][Hq+Hkv] (Qwen3 only)
  float* lse = nullptr;      // [Hq][N]
};

// A micro-batch's host data, copied to the device in one transfer (offsets in bytes).
struct BatchLayout {
  size_t tokens, targets, positions, cu_seqlens, sorted_tokens, segment_start, segment_id, num_segments, grad_scale,
      bytes;
  explicit BatchLayout(int64_t N) {
    size_t at = 0;
    auto take = [&](int64_t count) {
      size_t offset = at;
      at = size_t(round_up(int64_t(at + size_t(count) * 4), 16));
      return offset;
    };
    tokens = take(N), targets = take(N), positions = take(N), cu_seqlens = take(N + 1);
    sorted_tokens = take(N), segment_start = take(N + 1), segment_id = take(N), num_segments = take(1);
    grad_scale = take(1);
    bytes = at;
  }
};

struct LossAccumulator {
  double loss_sum;
  int64_t count;
};

}  // namespace

struct CudaDecoder::Impl {
  ModelConfig c;
  CudaDecoderOptions opt;
  int64_t N_max = 0, S_max = 0, C = 0, Q = 0, KV = 0, QKV = 0, I = 0, V = 0, L = 0, Hq = 0, Hkv = 0, D = 0;
  std::vector<Tensor> tensors;
  std::vector<Layer> layers;
  int embed = -1, final_norm = -1, lm_head = -1;
  int64_t weights_numel = 0, state_numel = 0, row_multiplier_numel = 0, trainable_count = 0;

  cuda::DeviceArena arena;
  std::vector<std::function<void()>> fixups;  // pointer resolution after allocate()
  cudaStream_t stream = nullptr;
  cudaEvent_t upload_done = nullptr;
  std::unique_ptr<cuda::Gemm> gemm;
  std::unique_ptr<cuda::Attention> attention;
  cuda::AttentionImpl attention_prefer = cuda::AttentionImpl::flash4;
  bool plan_fallback = false;

  // Device memory (arena).
  bf16* weights = nullptr;
  float *master = nullptr, *grads = nullptr, *adam_m = nullptr, *adam_v = nullptr, *row_multipliers = nullptr;
  cuda::AdamWTensor* adam_tensors = nullptr;
  cuda::AdamWChunk* adam_chunks = nullptr;
  int64_t num_chunks = 0;
  cuda::StepState* state = nullptr;
  double* norm_partials = nullptr;
  float *rope_cos = nullptr, *rope_sin = nullptr;
  unsigned char* batch_device = nullptr;
  std::vector<bf16*> x;  // residual stream: x[l] is layer l's input, x[L] the last output
  std::vector<LayerActivations> acts;
  bf16* h_final = nullptr;
  float* rstd_final = nullptr;
  bf16 *dx = nullptr, *dh = nullptr, *dattn = nullptr, *dqkv = nullptr, *dact = nullptr, *dgateup = nullptr;
  bf16* logits = nullptr;  // [logits_chunk][V]; in training overwritten in place by dlogits
  float* loss_rows = nullptr;
  int64_t logits_chunk = 0;
  LossAccumulator* forward_loss = nullptr;
  float* partials = nullptr;
  unsigned char* gemm_workspace = nullptr;
  bf16 *h1_shared_ptr = nullptr, *h2_shared_ptr = nullptr, *act_shared_ptr = nullptr;  // with recompute
  cuda::AttentionScratch attention_scratch;

  // Pinned host mirrors.
  unsigned char* batch_host = nullptr;
  cuda::StepState* state_host = nullptr;
  LossAccumulator* forward_loss_host = nullptr;
  BatchLayout batch_layout{0};

  // The current micro-batch.
  int64_t N = 0;
  cuda::AttentionDocuments docs;
  std::vector<bool> skip;
  bool have_activations = false;
  int64_t skipped_steps = 0;
  int64_t steps_taken = 0;

  // CUDA graphs of a training micro-step, by shape and documents.
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    std::vector<int> reduce;  // data parallel: buckets whose reduce-scatter follows each launch
  };
  std::map<std::vector<int64_t>, Graph> graphs;
  bool graphs_ok = true;
  bool graph_replayed = false;

  // Attention timing (options.time_attention): an event pair per attention call.
  std::vector<cudaEvent_t> timing_events;
  size_t timing_used = 0;
  double attention_ms = 0.0;

  // ---- Data parallel (ZeRO), when options.communicator has several ranks -------------
  // Layout: the fp32 state is cut into units (0 the embedding, 1 + l layer l, L + 1 the
  // final norm and head) and buckets of units (dist/shard_plan.hpp), each bucket padded
  // to world equal slices; tensors keep their single-GPU order, shifted per unit. The
  // bf16 weights of every group that trains mirror this flat layout element for element
  // (frozen groups follow it), so a bucket's weights are one contiguous run whose slice
  // r is rank r's to update: the all-gather lands in the weights themselves, in place.
  // Every rank holds: bf16 weights (whole), its slices of master / m / v and of the
  // reduced gradient (grad_shard), and the fp32 gradient: whole (ZeRO-1) or one bucket
  // at a time (ZeRO-2: bucket_grad points each bucket into one of two rotating buffers,
  // or into its own buffer for the bucket holding the head, written during the forward).
  // A step:
  //   start: the step's target count all-reduced on comm_stream and turned into the
  //     gradient scale on the device (count_ready), so that no host round trip waits
  //     behind the previous step's all-gathers;
  //   forward: before the first use of each bucket's weights, `stream` waits for that
  //     bucket's all-gather of the previous step (gather_done), so the all-gathers run
  //     under the forward, layer by layer; the cross-entropy waits for count_ready;
  //   backward of the reducing micro-batch (the last one; with ZeRO-2 every one): as
  //     each bucket's lowest unit finishes, an event on `stream` lets comm_stream
  //     reduce-scatter (sum) that bucket into grad_shard while backward goes on below
  //     it; `stream` waits for comm_stream before the optimizer;
  //   optimizer: loss / count and the gradient norm's partial sums all-reduced (every
  //     rank takes the same clip and skip decision), AdamW on the shard writing updated
  //     bf16 weights into the rank's slices, then on comm_stream one in-place all-gather
  //     per bucket in forward order, left running when the step returns.
  // Micro-batches replay CUDA graphs (ZeRO-1): the graph records bucket_ready and waits
  // for gather_done / count_ready as external event nodes, and the collectives are
  // enqueued by the host right after the launch (NCCL stays outside the graph; its
  // error polling is unchanged). ZeRO-2 runs eagerly: its buffer rotation waits for
  // reduce-scatters that the host enqueues while it enqueues backward.
  // The gradient's scale is 1 / (targets counted over all ranks' micro-batches), so the
  // sum over ranks is the gradient one GPU takes on the global batch.
  std::shared_ptr<dist::Communicator> comm;
  int world = 1, rank = 0, zero_stage = 1;
  dist::ShardPlan shard_plan;
  std::vector<int> tensor_unit;               // unit of each tensor (-1: no place in the flat layout)
  std::vector<int64_t> unit_begin;            // single-GPU state offset of each unit
  std::vector<dist::OwnedPiece> owned;        // this rank's pieces (tensor = index into tensors)
  std::vector<float*> tensor_grad;            // each tensor's gradient (nullptr: frozen)
  std::vector<float*> bucket_grad;            // each bucket's gradient buffer (its flat start)
  int head_bucket = -1;                       // ZeRO-2: the bucket with the head's gradient (own buffer)
  std::vector<int> bucket_slot;               // ZeRO-2: rotating buffer of each bucket (-1: its own)
  int64_t ring_numel = 0;                     // ZeRO-2: elements of each rotating buffer
  float *head_grad = nullptr, *ring[2] = {nullptr, nullptr};
  int slot_user[2] = {-1, -1};                // ZeRO-2: the bucket that last used each rotating buffer
  std::vector<char> acquired;                 // ZeRO-2: bucket buffers zeroed for this micro-batch
  int64_t num_adam_tensors = 0;
  float* grad_shard = nullptr;
  int64_t* dp_count = nullptr;
  int64_t* dp_count_host = nullptr;
  float* dp_scale = nullptr;                  // the step's gradient scale, from the all-reduced count
  cudaStream_t comm_stream = nullptr;
  std::vector<cudaEvent_t> bucket_ready, reduced, gathered;  // per bucket
  cudaEvent_t count_ready = nullptr, adam_done = nullptr, comm_joined = nullptr, reduced_event = nullptr;
  size_t next_bucket = 0;                     // the next bucket to reduce-scatter
  int next_gather = -1;                       // the next bucket whose all-gather the forward waits for
  bool reducing = false, grads_reduced = false;
  bool dp_step = false;                       // inside train_step: the cross-entropy reads dp_scale
  bool capturing = false;                     // in a graph capture: external events, deferred collectives
  std::vector<int> deferred;                  // buckets marked ready during a capture
  bool dp() const { return world > 1; }
  bool zero2() const { return dp() && zero_stage == 2; }
  int64_t optimizer_numel() const { return dp() ? shard_plan.shard_numel : state_numel; }

  ~Impl() {
    for (auto& [key, g] : graphs)
      if (g.exec) cudaGraphExecDestroy(g.exec);
    for (cudaEvent_t e : timing_events) cudaEventDestroy(e);
    for (auto* events : {&bucket_ready, &reduced, &gathered})
      for (cudaEvent_t e : *events) cudaEventDestroy(e);
    for (cudaEvent_t e : {count_ready, adam_done, comm_joined, reduced_event})
      if (e) cudaEventDestroy(e);
    if (comm_stream) cudaStreamDestroy(comm_stream);
    if (dp_count_host) cudaFreeHost(dp_count_host);
    attention.reset();
    gemm.reset();
    if (upload_done) cudaEventDestroy(upload_done);
    if (stream) cudaStreamDestroy(stream);
    if (batch_host) cudaFreeHost(batch_host);
    if (state_host) cudaFreeHost(state_host);
    if (forward_loss_host) cudaFreeHost(forward_loss_host);
  }

  // ---- construction -------------------------------------------------------------
  void describe(const ModelConfig& config, const CudaDecoderOptions& options) {
    c = config;
    c.finalize_and_validate();
    opt = options;
    C = c.hidden_size, I = c.intermediate_size, V = c.vocab_size, L = c.num_hidden_layers;
    Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
    Q = c.q_dim(), KV = c.kv_dim(), QKV = Q + 2 * KV;
    if (C % 8 != 0 || I % 8 != 0)
      fail("the CUDA backend needs hidden_size and intermediate_size divisible by 8 (got {} and {})", C, I);
    if (c.has_qk_norm() && D > 256) fail("the CUDA backend's q/k norm supports head_dim <= 256, got {}", D);
    N_max = opt.max_tokens;
    if (N_max <= 0) fail("CudaDecoderOptions.max_tokens must be positive, got {}", N_max);
    S_max = opt.max_seq_len > 0 ? opt.max_seq_len : std::min(N_max, c.max_position_embeddings);
    S_max = std::min({S_max, N_max, c.max_position_embeddings});
    comm = opt.communicator;
    if (comm && comm->world() > 1) {
      if (!comm->device_buffers()) fail("CudaDecoder: a {}-rank communicator must work on device memory (NCCL)", comm->world());
      world = comm->world(), rank = comm->rank();
      zero_stage = opt.zero_stage;
      if (zero_stage != 1 && zero_stage != 2)
        fail("CudaDecoderOptions.zero_stage must be 1 or 2, got {}", opt.zero_stage);
    }

    auto add = [&](const std::string& name, std::vector<int64_t> shape, bool weight_decay) {
      Tensor t;
      t.name = name;
      t.numel = 1;
      for (int64_t s : shape) t.numel *= s;
      t.shape = std::move(shape);
      t.weight_decay = weight_decay;
      tensors.push_back(std::move(t));
      return int(tensors.size()) - 1;
    };
    // Names, shapes and decay flags exactly as Decoder registers them.
    embed = add("model.embed_tokens.weight", {V, C}, true);
    for (int64_t l = 0; l < L; ++l) {
      std::string p = "model.layers." + std::to_string(l) + ".";
      Layer y;
      y.input_norm = add(p + "input_layernorm.weight", {C}, false);
      y.q = add(p + "self_attn.q_proj.weight", {Q, C}, true);
      y.k = add(p + "self_attn.k_proj.weight", {KV, C}, true);
      y.v = add(p + "self_attn.v_proj.weight", {KV, C}, true);
      y.o = add(p + "self_attn.o_proj.weight", {C, Q}, true);
      if (c.has_qkv_bias()) {
        y.q_bias = add(p + "self_attn.q_proj.bias", {Q}, false);
        y.k_bias = add(p + "self_attn.k_proj.bias", {KV}, false);
        y.v_bias = add(p + "self_attn.v_proj.bias", {KV}, false);
      }
      if (c.has_o_bias()) y.o_bias = add(p + "self_attn.o_proj.bias", {C}, false);
      if (c.has_qk_norm()) {
        y.q_norm = add(p + "self_attn.q_norm.weight", {D}, false);
        y.k_norm = add(p + "self_attn.k_norm.weight", {D}, false);
      }
      y.post_norm = add(p + "post_attention_layernorm.weight", {C}, false);
      y.gate = add(p + "mlp.gate_proj.weight", {I, C}, true);
      y.up = add(p + "mlp.up_proj.weight", {I, C}, true);
      y.down = add(p + "mlp.down_proj.weight", {C, I}, true);
      layers.push_back(y);
    }
    final_norm = add("model.norm.weight", {C}, false);
    lm_head = c.tie_word_embeddings ? embed : add("lm_head.weight", {V, C}, true);
  }

  // The fused groups in forward order, each unit opened by `begin_unit(u)`: q|k|v, their
  // biases, and gate|up are each one contiguous matrix in the weights.
  template <typename BeginUnit, typename Place>
  void for_each_group(BeginUnit begin_unit, Place place) const {
    begin_unit(0);
    place({embed});
    for (const Layer& y : layers) {
      begin_unit(1 + int(&y - layers.data()));
      place({y.input_norm});
      place({y.q, y.k, y.v});
      place({y.q_bias, y.k_bias, y.v_bias});
      place({y.o});
      place({y.o_bias});
      place({y.q_norm});
      place({y.k_norm});
      place({y.post_norm});
      place({y.gate, y.up});
      place({y.down});
    }
    begin_unit(int(L) + 1);
    place({final_norm});
    if (lm_head != embed) place({lm_head});
  }

  // Weights in the order the fused GEMMs read them: q|k|v, their biases, and gate|up are
  // each one contiguous matrix. Trainable tensors' fp32 state follows the same order, so
  // a fused group whose members all train has one contiguous gradient too.
  void lay_out() {
    if (dp()) {
      lay_out_data_parallel();
    } else {
      int64_t w = 0, s = 0;
      for_each_group([](int) {},
                     [&](std::initializer_list<int> group) {
                       w = round_up(w, 128);
                       s = round_up(s, 64);
                       for (int i : group) {
                         if (i < 0) continue;
                         Tensor& t = tensors[i];
                         t.weight_offset = w;
                         w += t.numel;
                         t.state_offset = t.trainable ? s : -1;
                         if (t.trainable) s += t.numel;
                       }
                     });
      weights_numel = round_up(w, 128);
      state_numel = round_up(s, 64);
    }
    int64_t r = 0;
    trainable_count = 0;
    for (Tensor& t : tensors) {
      if (!t.trainable) continue;
      ++trainable_count;
      t.row_multiplier_offset = r;
      r += t.shape[0];
    }
    row_multiplier_numel = r;
  }

  // Data parallel: a group with a trainable member takes flat room for all its members
  // (a frozen member is a zero hole in the state: the group's weights, which mirror the
  // flat layout, stay one matrix for the fused GEMM); the shard plan over the units; the
  // weights of the flat layout first, frozen groups after them.
  void lay_out_data_parallel() {
    int64_t s = 0;
    int unit = 0;
    tensor_unit.assign(tensors.size(), -1);
    unit_begin.assign(size_t(L + 2), 0);
    std::vector<std::vector<int>> frozen_groups;
    for_each_group([&](int u) { unit = u, unit_begin[u] = round_up(s, 64); },
                   [&](std::initializer_list<int> group) {
                     bool trains = false;
                     std::vector<int> members;
                     for (int i : group)
                       if (i >= 0) members.push_back(i), trains = trains || tensors[i].trainable;
                     if (!trains) {
                       if (!members.empty()) frozen_groups.push_back(members);
                       return;
                     }
                     s = round_up(s, 64);
                     for (int i : members) {
                       tensor_unit[i] = unit;
                       tensors[i].flat_offset = s;
                       s += tensors[i].numel;
                     }
                   });
    state_numel = round_up(s, 64);
    shard_state();
    int64_t w = shard_plan.total_numel;
    for (Tensor& t : tensors)
      if (t.flat_offset >= 0) t.weight_offset = t.flat_offset;
    for (const std::vector<int>& group : frozen_groups) {
      w = round_up(w, 128);
      for (int i : group) tensors[i].weight_offset = w, w += tensors[i].numel;
    }
    weights_numel = round_up(w, 128);
  }

  // The shard plan over the units, tensors moved to the plan's flat offsets (a whole unit
  // shifts, so fused groups stay contiguous), this rank's pieces, ZeRO-2's buffers.
  void shard_state() {
    std::vector<int64_t> unit_numel(unit_begin.size());
    for (size_t u = 0; u < unit_begin.size(); ++u)
      unit_numel[u] = (u + 1 < unit_begin.size() ? unit_begin[u + 1] : state_numel) - unit_begin[u];
    dist::ShardPlanConfig pc;
    pc.world = world;
    pc.align = 64;
    pc.bucket_numel = std::max<int64_t>(1, opt.bucket_numel);
    shard_plan = dist::plan_shards(unit_numel, pc);
    std::vector<dist::TensorRange> ranges;
    std::vector<int> index;
    for (size_t i = 0; i < tensors.size(); ++i) {
      Tensor& t = tensors[i];
      if (t.flat_offset < 0) continue;
      t.flat_offset += shard_plan.unit_offset[tensor_unit[i]] - unit_begin[tensor_unit[i]];
      t.state_offset = t.trainable ? t.flat_offset : -1;
      if (!t.trainable) continue;
      ranges.push_back({t.state_offset, t.numel});
      index.push_back(int(i));
    }
    state_numel = shard_plan.total_numel;
    owned = dist::owned_pieces(shard_plan, ranges, rank);
    for (dist::OwnedPiece& p : owned) p.tensor = index[p.tensor];

    const size_t B = shard_plan.buckets.size();
    bucket_slot.assign(B, -1);
    acquired.assign(B, 0);
    head_bucket = -1;
    ring_numel = 0;
    if (zero_stage != 2) return;
    // ZeRO-2: the head's gradient is written by the forward, long before backward reaches
    // the rest of its bucket, so that bucket keeps a buffer of its own; the others take
    // turns in two buffers, in reduction order.
    if (tensor_unit[lm_head] >= 0 && tensors[lm_head].trainable)
      head_bucket = shard_plan.unit_bucket[tensor_unit[lm_head]];
    int turn = 0;
    for (size_t k = 0; k < B; ++k) {
      if (int(k) == head_bucket || shard_plan.buckets[k].slice == 0) continue;
      bucket_slot[k] = turn++ % 2;
      ring_numel = std::max(ring_numel, shard_plan.buckets[k].padded());
    }
  }

  template <typename T>
  void plan(T*& ptr, const std::string& what, int64_t count) {
    size_t offset = arena.reserve_array<T>(what, std::max<int64_t>(count, 1));
    fixups.push_back([this, &ptr, offset] { ptr = arena.at<T>(offset); });
  }

  void plan_memory() {
    const int64_t N = N_max;
    plan(weights, "weights (bf16)", weights_numel);
    plan(master, "master weights (fp32)", optimizer_numel());
    if (zero2()) {
      if (head_bucket >= 0) plan(head_grad, "gradients (fp32, ZeRO-2 head bucket)", shard_plan.buckets[head_bucket].padded());
      if (ring_numel > 0) {
        plan(ring[0], "gradients (fp32, ZeRO-2 buckets)", ring_numel);
        plan(ring[1], "gradients (fp32, ZeRO-2 buckets)", ring_numel);
      }
    } else {
      plan(grads, "gradients (fp32)", state_numel);
    }
    plan(adam_m, "AdamW moments (fp32)", optimizer_numel());
    plan(adam_v, "AdamW moments (fp32)", optimizer_numel());
    plan(row_multipliers, "optimizer tables", row_multiplier_numel);
    num_chunks = 0;
    for (const Tensor& t : tensors)
      if (t.trainable) num_chunks += (t.numel + kAdamWChunk - 1) / kAdamWChunk;
    num_adam_tensors = trainable_count;
    if (dp()) {
      num_adam_tensors = int64_t(owned.size());
      num_chunks = int64_t(dist::split_into_chunks(owned, kAdamWChunk).size());
      plan(grad_shard, "gradient shard (fp32)", shard_plan.shard_numel);
      plan(dp_count, "optimizer tables", 1);
      plan(dp_scale, "optimizer tables", 1);
    }
    plan(adam_tensors, "optimizer tables", num_adam_tensors);
    plan(adam_chunks, "optimizer tables", num_chunks);
    plan(state, "optimizer tables", 1);
    plan(norm_partials, "optimizer tables", cuda::kReduceBlocks);
    plan(rope_cos, "rope tables", S_max * (D / 2));
    plan(rope_sin, "rope tables", S_max * (D / 2));
    batch_layout = BatchLayout(N);
    plan(batch_device, "batch", int64_t(batch_layout.bytes));

    x.assign(L + 1, nullptr);
    acts.assign(L, LayerActivations{});
    for (int64_t l = 0; l <= L; ++l) plan(x[l], "act: residual stream", N * C);
    for (int64_t l = 0; l < L; ++l) {
      LayerActivations& a = acts[l];
      plan(a.x2, "act: residual stream", N * C);
      plan(a.rstd1, "act: rmsnorm stats", N);
      plan(a.rstd2, "act: rmsnorm stats", N);
      if (!opt.recompute) {
        plan(a.h1, "act: rmsnorm outputs", N * C);
        plan(a.h2, "act: rmsnorm outputs", N * C);
        plan(a.act, "act: swiglu", N * I);
      }
      plan(a.qkv, "act: qkv", N * QKV);
      if (c.has_qk_norm()) {
        plan(a.qkv_raw, "act: qkv before q/k norm", N * QKV);
        plan(a.rstd_qk, "act: rmsnorm stats", N * (Hq + Hkv));
      }
      plan(a.attn, "act: attention out", N * Q);
      plan(a.lse, "act: attention lse", Hq * N);
      plan(a.gateup, "act: gate|up", N * 2 * I);
    }
    if (opt.recompute) {
      plan(h1_shared_ptr, "recompute scratch", N * C);
      plan(h2_shared_ptr, "recompute scratch", N * C);
      plan(act_shared_ptr, "recompute scratch", N * I);
    }
    plan(h_final, "act: final norm", N * C);
    plan(rstd_final, "act: rmsnorm stats", N);
    plan(dx, "backward scratch", N * C);
    plan(dh, "backward scratch", N * C);
    plan(dattn, "backward scratch", N * Q);
    plan(dqkv, "backward scratch", N * QKV);
    plan(dact, "backward scratch", N * I);
    plan(dgateup, "backward scratch", N * 2 * I);
    logits_chunk = opt.logits_chunk_tokens > 0 ? opt.logits_chunk_tokens
                                               : std::max<int64_t>(1, int64_t(kLogitsBudget / (size_t(V) * 2)));
    logits_chunk = std::min(logits_chunk, N);
    plan(logits, "cross-entropy chunk (bf16 logits, dlogits in place)", logits_chunk * V);
    plan(loss_rows, "cross-entropy chunk", N);
    plan(forward_loss, "cross-entropy chunk", 1);
    plan(partials, "reduction partials", cuda::kReduceBlocks * std::max({C, QKV, 2 * D}));
    plan(gemm_workspace, "cuBLASLt workspace", int64_t(kGemmWorkspace));
    cuda::AttentionShape shape = attention_shape();
    if (plan_fallback) {
      cuda::AttentionScratchSize z = cuda::attention_scratch_size(shape, N, S_max);
      plan(attention_scratch.scores, "attention fallback scratch", z.scores_floats);
      plan(attention_scratch.probs, "attention fallback scratch", z.probs_elems);
      plan(attention_scratch.dk, "attention fallback scratch", z.dkv_floats);
      plan(attention_scratch.dv, "attention fallback scratch", z.dkv_floats);
      plan(attention_scratch.delta, "attention fallback scratch", z.delta_floats);
    }
    arena.allocate();
    for (auto& f : fixups) f();
    fixups.clear();
    point_gradients();
    if (opt.recompute)
      for (LayerActivations& a : acts) a.h1 = h1_shared_ptr, a.h2 = h2_shared_ptr, a.act = act_shared_ptr;
    gemm = std::make_unique<cuda::Gemm>(gemm_workspace, kGemmWorkspace);
    attention = std::make_unique<cuda::Attention>(shape, *gemm, attention_scratch, attention_prefer);
  }

  cuda::AttentionShape attention_shape() const {
    cuda::AttentionShape s;
    s.Hq = Hq, s.Hkv = Hkv, s.D = D;
    s.softmax_scale = float(1.0 / std::sqrt(double(D)));
    // transformers' sliding window W lets a query see itself and the W - 1 keys before it.
    s.window_left = c.sliding_window > 0 ? int(c.sliding_window - 1) : -1;
    return s;
  }

  void choose_attention() {
    if (opt.attention == "fallback") {
      attention_prefer = cuda::AttentionImpl::fallback;
      plan_fallback = true;
    } else if (opt.attention == "flash4") {
      attention_prefer = cuda::AttentionImpl::flash4;
      plan_fallback = false;
    } else if (opt.attention == "auto") {
      std::string why;
      if (cuda::flash4_cuda_supports(attention_shape(), &why)) {
        attention_prefer = cuda::AttentionImpl::flash4;
        plan_fallback = false;
      } else {
        spdlog::info("CUDA decoder: flash4 cannot run this attention on the GPU ({}); using the {}", why,
                     cuda::attention_impl_name(cuda::AttentionImpl::fallback));
        attention_prefer = cuda::AttentionImpl::fallback;
        plan_fallback = true;
      }
    } else {
      fail("CudaDecoderOptions.attention must be auto, flash4 or fallback, got '{}'", opt.attention);
    }
  }

  void start() {
    ADEPT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    ADEPT_CUDA_CHECK(cudaEventCreateWithFlags(&upload_done, cudaEventDisableTiming));
    choose_attention();
    auto event = [](cudaEvent_t& e) { ADEPT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming)); };
    if (dp()) {
      ADEPT_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream, cudaStreamNonBlocking));
      for (cudaEvent_t* e : {&count_ready, &adam_done, &comm_joined, &reduced_event}) event(*e);
      ADEPT_CUDA_CHECK(cudaMallocHost(&dp_count_host, sizeof(int64_t)));
    }
    lay_out();
    plan_memory();
    for (auto* events : {&bucket_ready, &reduced, &gathered}) {
      events->assign(shard_plan.buckets.size(), nullptr);
      for (cudaEvent_t& e : *events) event(e);
    }
    ADEPT_CUDA_CHECK(cudaMallocHost(&batch_host, batch_layout.bytes));
    ADEPT_CUDA_CHECK(cudaMallocHost(&state_host, sizeof(cuda::StepState)));
    ADEPT_CUDA_CHECK(cudaMallocHost(&forward_loss_host, sizeof(LossAccumulator)));
    ADEPT_CUDA_CHECK(cudaEventRecord(upload_done, stream));
    *state_host = cuda::StepState{};
    ADEPT_CUDA_CHECK(cudaMemcpyAsync(state, state_host, sizeof(cuda::StepState), cudaMemcpyHostToDevice, stream));

    cpu::RopeSpec spec;
    spec.head_dim = D;
    spec.theta = c.rope_theta;
    spec.scaling_type = c.rope_scaling.type;
    spec.factor = c.rope_scaling.factor;
    spec.low_freq_factor = c.rope_scaling.low_freq_factor;
    spec.high_freq_factor = c.rope_scaling.high_freq_factor;
    spec.original_max_position_embeddings = c.rope_scaling.original_max_position_embeddings;
    cpu::RopeTable table = cpu::rope_table(spec, S_max);  // the CPU reference's own table
    std::vector<float> cos(table.cos.begin(), table.cos.end()), sin(table.sin.begin(), table.sin.end());
    upload(rope_cos, cos.data(), cos.size() * 4);
    upload(rope_sin, sin.data(), sin.size() * 4);
    upload_optimizer_tables();
  }

  void upload_optimizer_tables() {
    std::vector<cuda::AdamWTensor> table;
    std::vector<cuda::AdamWChunk> chunks;
    std::vector<float> rows(size_t(std::max<int64_t>(row_multiplier_numel, 1)), 1.0f);
    std::vector<int> table_index(tensors.size(), -1);  // tensor → its row in `table`
    for (const Tensor& t : tensors) {
      if (!t.trainable) continue;
      table_index[&t - tensors.data()] = int(table.size());
      cuda::AdamWTensor a;
      a.weight_offset = t.weight_offset;
      a.state_offset = t.state_offset;
      a.numel = t.numel;
      a.row_len = t.numel / t.shape[0];
      a.lr_multiplier = t.lr_multiplier;
      a.weight_decay = t.weight_decay ? float(opt.adamw.weight_decay) : 0.0f;
      if (!t.row_multiplier.empty()) {
        if (int64_t(t.row_multiplier.size()) != t.shape[0])
          fail("{}: {} row multipliers for {} rows", t.name, t.row_multiplier.size(), t.shape[0]);
        a.row_multiplier_offset = t.row_multiplier_offset;
        std::copy(t.row_multiplier.begin(), t.row_multiplier.end(), rows.begin() + t.row_multiplier_offset);
      }
      for (int64_t b = 0; b < t.numel; b += kAdamWChunk)
        chunks.push_back({int32_t(table.size()), b, std::min(t.numel, b + kAdamWChunk)});
      table.push_back(a);
    }
    if (dp()) {
      // AdamW runs over this rank's pieces: the bf16 weights at the tensor's offset (the
      // flat one, which the weights mirror), the fp32 arrays at the piece's shard offset
      // (both indexed by the tensor's element j).
      std::vector<cuda::AdamWTensor> pieces;
      std::vector<cuda::AdamWChunk> piece_chunks;
      for (const dist::OwnedPiece& p : owned) {
        cuda::AdamWTensor a = table[table_index[p.tensor]];
        a.weight_offset = tensors[p.tensor].state_offset;
        a.state_offset = p.shard_offset - p.begin;
        for (int64_t b = p.begin; b < p.end; b += kAdamWChunk)
          piece_chunks.push_back({int32_t(pieces.size()), b, std::min(p.end, b + kAdamWChunk)});
        pieces.push_back(a);
      }
      table.swap(pieces);
      chunks.swap(piece_chunks);
    }
    if (!table.empty()) upload(adam_tensors, table.data(), table.size() * sizeof(table[0]));
    if (!chunks.empty()) upload(adam_chunks, chunks.data(), chunks.size() * sizeof(chunks[0]));
    upload(row_multipliers, rows.data(), rows.size() * 4);
    sync_stream();  // the host tables go out of scope
  }

  // Waits for `stream`; data parallel, within the collective timeout (the stream may
  // wait for all-gathers or reductions of ranks that failed).
  void sync_stream() {
    if (dp())
      comm->synchronize(stream);
    else
      ADEPT_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  // Every host→device copy goes on `stream`, in order with the kernels that read it. A
  // plain cudaMemcpy from pageable memory may return before its DMA has landed, and the
  // legacy stream it runs on does not order this non-blocking stream: kernels queued
  // right after it read stale device memory (seen on an H200: a freshly built decoder
  // evaluated the weights' previous contents until the first optimizer step rewrote them).
  void upload(void* dst, const void* src, size_t bytes) {
    ADEPT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
  }

  void read_multipliers(const ParameterStore<float>& host) {
    for (Tensor& t : tensors) {
      const ParameterInfo& p = host.info(host.index(t.name));
      t.lr_multiplier = p.lr_multiplier;
      t.row_multiplier = p.row_multiplier;
    }
  }

  void upload_weights(const ParameterStore<float>& host) {
    auto source = [&](const Tensor& t) {
      int i = host.index(t.name);
      if (host.info(i).numel != t.numel) fail("{}: host tensor has {} values, expected {}", t.name, host.info(i).numel, t.numel);
      return host.value(i);
    };
    // fp32 on the device (master, or a staging buffer), converted there.
    auto upload_full = [&](const Tensor& t, float* full) {
      upload(full, source(t), size_t(t.numel) * 4);
      cuda::convert_f32_to_bf16(weights + t.weight_offset, full, t.numel, stream);
    };
    for (const Tensor& t : tensors) {
      if (t.trainable && !dp()) {
        upload_full(t, master + t.state_offset);
      } else if (!t.trainable && t.flat_offset < 0) {
        // Staged by cudaMemcpyAsync before it returns, so `b` may go out of scope.
        const float* src = source(t);
        std::vector<bf16> b(size_t(t.numel));
        for (int64_t j = 0; j < t.numel; ++j) b[j] = __float2bfloat16(src[j]);
        upload(weights + t.weight_offset, b.data(), b.size() * 2);
      }
    }
    if (dp()) stage_buckets([&](int i, float* full) { upload_full(tensors[i], full); });
    ADEPT_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  int bucket_of(int tensor) const { return shard_plan.unit_bucket[tensor_unit[tensor]]; }

  // Data parallel, while the decoder is built: bucket by bucket, `fill(i, full)` writes
  // tensor i's fp32 values to `full` in the bucket's gradient buffer (and its bf16
  // weights), and this rank keeps its pieces of them as master weights. Then the
  // gradient is zero again (padding and holes must stay zero).
  template <typename Fill>
  void stage_buckets(Fill fill) {
    for (size_t k = 0; k < shard_plan.buckets.size(); ++k) {
      const dist::Bucket& b = shard_plan.buckets[k];
      if (b.numel == 0) continue;
      for (size_t i = 0; i < tensors.size(); ++i)
        if (tensors[i].flat_offset >= 0 && bucket_of(int(i)) == int(k))
          fill(int(i), bucket_grad[k] + (tensors[i].flat_offset - b.offset));
      for (const dist::OwnedPiece& p : owned)
        if (bucket_of(p.tensor) == int(k))
          ADEPT_CUDA_CHECK(cudaMemcpyAsync(master + p.shard_offset,
                                           bucket_grad[k] + (tensors[p.tensor].state_offset + p.begin - b.offset),
                                           size_t(p.end - p.begin) * 4, cudaMemcpyDeviceToDevice, stream));
    }
    if (!zero2()) ADEPT_CUDA_CHECK(cudaMemsetAsync(grads, 0, size_t(state_numel) * 4, stream));
  }

  void init_weights(uint64_t seed, double init_std) {
    auto fill = [&](int i, float* m) {
      const Tensor& t = tensors[size_t(i)];
      bool is_norm = t.name.find("norm") != std::string::npos;
      bool is_bias = t.name.size() > 5 && t.name.compare(t.name.size() - 5, 5, ".bias") == 0;
      if (is_norm || is_bias)
        cuda::fill_constant(weights + t.weight_offset, m, t.numel, is_norm ? 1.0f : 0.0f, stream);
      else
        cuda::fill_normal(weights + t.weight_offset, m, t.numel, seed + 0x9E3779B97F4A7C15ull * (i + 1),
                          float(init_std), stream);
    };
    for (size_t i = 0; i < tensors.size(); ++i) {
      const Tensor& t = tensors[i];
      if (!dp()) fill(int(i), t.trainable ? master + t.state_offset : nullptr);
      else if (t.flat_offset < 0) fill(int(i), nullptr);
    }
    if (dp()) stage_buckets(fill);
    ADEPT_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  // After the arena is allocated: each bucket's and each trainable tensor's gradient.
  void point_gradients() {
    const std::vector<dist::Bucket>& buckets = shard_plan.buckets;
    bucket_grad.assign(buckets.size(), nullptr);
    for (size_t k = 0; k < buckets.size(); ++k) {
      if (!zero2()) bucket_grad[k] = grads + buckets[k].offset;
      else if (int(k) == head_bucket) bucket_grad[k] = head_grad;
      else if (bucket_slot[k] >= 0) bucket_grad[k] = ring[bucket_slot[k]];
    }
    tensor_grad.assign(tensors.size(), nullptr);
    for (size_t i = 0; i < tensors.size(); ++i) {
      const Tensor& t = tensors[i];
      if (t.state_offset < 0) continue;
      if (!dp()) {
        tensor_grad[i] = grads + t.state_offset;
      } else {
        const int k = bucket_of(int(i));
        tensor_grad[i] = bucket_grad[k] + (t.state_offset - buckets[k].offset);
      }
    }
  }

  // ---- helpers ------------------------------------------------------------------
  const bf16* W(int i) const { return i < 0 ? nullptr : weights + tensors[i].weight_offset; }
  float* G(int i) const { return i < 0 ? nullptr : tensor_grad[i]; }
  const int32_t* batch_i32(size_t offset) const { return reinterpret_cast<const int32_t*>(batch_device + offset); }
  const int32_t* tokens() const { return batch_i32(batch_layout.tokens); }
  const int32_t* targets() const { return batch_i32(batch_layout.targets); }
  const int32_t* positions() const { return batch_i32(batch_layout.positions); }

  // Runs of adjacent trainable members of a fused group (rows stacked in order, columns
  // of dout at the same offsets): one call per run whose gradients are contiguous.
  template <typename Fn>
  void for_each_trainable_run(std::initializer_list<int> members, Fn fn) const {
    int64_t col = 0, run_col = 0, run_rows = 0;
    int first = -1, last = -1;
    auto flush = [&] {
      if (first >= 0) fn(first, run_col, run_rows);
      first = -1, run_rows = 0;
    };
    for (int i : members) {
      if (i < 0) continue;
      const Tensor& t = tensors[i];
      if (!t.trainable) {
        flush();
      } else if (first >= 0 && tensors[last].state_offset + tensors[last].numel == t.state_offset) {
        run_rows += t.shape[0];
        last = i;
      } else {
        flush();
        first = last = i, run_col = col, run_rows = t.shape[0];
      }
      col += t.shape[0];
    }
    flush();
  }

  // dW[group] += doutᵀ · in   (dout [N][ld_dout] holds the group's output columns)
  void group_weight_gradient(std::initializer_list<int> members, const bf16* dout, int64_t ld_dout, const bf16* in,
                             int64_t IC) {
    for_each_trainable_run(members, [&](int first, int64_t col, int64_t rows) {
      cuda::linear_backward_weight(*gemm, G(first), dout + col, ld_dout, in, IC, N, IC, rows, stream);
    });
  }

  void group_bias_gradient(std::initializer_list<int> members, const bf16* dout, int64_t ld_dout) {
    for_each_trainable_run(members, [&](int first, int64_t col, int64_t rows) {
      cuda::bias_backward(G(first), partials, dout + col, N, rows, ld_dout, stream);
    });
  }

  // ---- one micro-batch ----------------------------------------------------------
  void prepare_batch(const Batch& b, const ForwardOptions& fo, bool train) {
    const int64_t n_tokens = b.B * b.S;
    if (n_tokens <= 0) fail("batch is empty (B={}, S={})", b.B, b.S);
    if (n_tokens > N_max) fail("batch of {} tokens exceeds the CUDA decoder's planned {} (max_tokens)", n_tokens, N_max);
    N = n_tokens;
    std::vector<int32_t>& cu = docs.cu_seqlens;
    if (b.documents) {
      cu = *b.documents;
      if (cu.size() < 2 || cu.front() != 0 || cu.back() != N)
        fail("batch documents must run from 0 to B*S={} in increasing offsets", N);
    } else {
      cu.resize(b.B + 1);
      for (int64_t r = 0; r <= b.B; ++r) cu[r] = int32_t(r * b.S);
    }
    // Wait until the previous upload has left the pinned buffer (data parallel: it may
    // queue behind collectives, so within their timeout).
    if (dp())
      comm->synchronize_event(upload_done);
    else
      ADEPT_CUDA_CHECK(cudaEventSynchronize(upload_done));
    auto host_i32 = [&](size_t offset) { return reinterpret_cast<int32_t*>(batch_host + offset); };
    int32_t* pos = host_i32(batch_layout.positions);
    docs.max_len = 0;
    for (size_t d = 0; d + 1 < cu.size(); ++d) {
      int32_t len = cu[d + 1] - cu[d];
      if (len <= 0) fail("batch document {} is empty or out of order", d);
      if (len > c.max_position_embeddings)
        fail("document of {} tokens exceeds max_position_embeddings ({})", len, c.max_position_embeddings);
      if (len > S_max) fail("document of {} tokens exceeds the CUDA decoder's planned max_seq_len ({})", len, S_max);
      docs.max_len = std::max(docs.max_len, len);
      for (int32_t i = 0; i < len; ++i) pos[cu[d] + i] = i;
    }
    int64_t count = 0;
    for (int64_t n = 0; n < N; ++n) {
      if (b.tokens[n] < 0 || b.tokens[n] >= V)
        fail("token id {} at position {} is outside the vocabulary [0, {})", b.tokens[n], n, V);
      int32_t t = b.targets[n];
      if (t != kIgnoreIndex && (t < 0 || t >= V))
        fail("target id {} at position {} is outside the vocabulary [0, {})", t, n, V);
      count += t != kIgnoreIndex;
    }
    std::memcpy(host_i32(batch_layout.tokens), b.tokens, size_t(N) * 4);
    std::memcpy(host_i32(batch_layout.targets), b.targets, size_t(N) * 4);
    std::memcpy(host_i32(batch_layout.cu_seqlens), cu.data(), cu.size() * 4);
    cuda::EmbeddingSegments seg = cuda::embedding_segments(b.tokens, N);
    std::memcpy(host_i32(batch_layout.sorted_tokens), seg.sorted_tokens.data(), seg.sorted_tokens.size() * 4);
    std::memcpy(host_i32(batch_layout.segment_start), seg.segment_start.data(), seg.segment_start.size() * 4);
    std::memcpy(host_i32(batch_layout.segment_id), seg.segment_id.data(), seg.segment_id.size() * 4);
    *host_i32(batch_layout.num_segments) = int32_t(seg.segment_id.size());
    double scale = fo.grad_scale;
    if (train && scale == 0.0) scale = count ? 1.0 / double(count) : 0.0;
    *reinterpret_cast<float*>(batch_host + batch_layout.grad_scale) = float(scale);
    ADEPT_CUDA_CHECK(cudaMemcpyAsync(batch_device, batch_host, batch_layout.bytes, cudaMemcpyHostToDevice, stream));
    ADEPT_CUDA_CHECK(cudaEventRecord(upload_done, stream));
    docs.cu_seqlens_device = batch_i32(batch_layout.cu_seqlens);
    skip = fo.skip_layers;
    skip.resize(L, false);
  }

  void enqueue_forward(bool train) {
    ADEPT_CUDA_CHECK(cudaMemsetAsync(forward_loss, 0, sizeof(LossAccumulator), stream));
    begin_gathered_weights();
    weights_ready(0);
    cuda::embedding_forward(x[0], tokens(), W(embed), N, C, stream);
    for (int64_t l = 0; l < L; ++l) {
      weights_ready(int(l) + 1);
      if (skip[l]) {
        ADEPT_CUDA_CHECK(cudaMemcpyAsync(x[l + 1], x[l], size_t(N * C) * 2, cudaMemcpyDeviceToDevice, stream));
        continue;
      }
      const Layer& y = layers[l];
      LayerActivations& a = acts[l];
      cuda::rmsnorm_forward(a.h1, a.rstd1, x[l], W(y.input_norm), N, C, c.rms_norm_eps, stream);
      bf16* projected = c.has_qk_norm() ? a.qkv_raw : a.qkv;
      cuda::linear_forward(*gemm, projected, QKV, a.h1, C, W(y.q), W(y.q_bias), nullptr, N, C, QKV, stream);
      if (c.has_qk_norm())
        cuda::qk_norm_rope_forward(a.qkv, a.rstd_qk, a.qkv_raw, W(y.q_norm), W(y.k_norm), positions(), rope_cos,
                                   rope_sin, N, QKV, Hq, Hkv, D, c.rms_norm_eps, stream);
      else
        cuda::rope_forward(a.qkv, positions(), rope_cos, rope_sin, N, QKV, Hq, Hkv, D, stream);
      timed([&] { attention->forward(a.attn, a.lse, a.qkv, QKV, N, docs, stream); });
      // x2 = x + attn · Woᵀ (+ bo): the residual add is the GEMM's beta = 1.
      cuda::linear_forward(*gemm, a.x2, C, a.attn, Q, W(y.o), W(y.o_bias), x[l], N, Q, C, stream);
      cuda::rmsnorm_forward(a.h2, a.rstd2, a.x2, W(y.post_norm), N, C, c.rms_norm_eps, stream);
      cuda::linear_forward(*gemm, a.gateup, 2 * I, a.h2, C, W(y.gate), nullptr, nullptr, N, C, 2 * I, stream);
      cuda::swiglu_forward(a.act, a.gateup, N, I, stream);
      cuda::linear_forward(*gemm, x[l + 1], C, a.act, I, W(y.down), nullptr, a.x2, N, I, C, stream);
    }
    weights_ready(int(L) + 1);
    cuda::rmsnorm_forward(h_final, rstd_final, x[L], W(final_norm), N, C, c.rms_norm_eps, stream);
    const float* grad_scale = reinterpret_cast<const float*>(batch_device + batch_layout.grad_scale);
    if (train && zero2()) {
      std::fill(acquired.begin(), acquired.end(), 0);
      if (head_bucket >= 0) acquire(head_bucket);  // the head's gradient is written below
    }
    if (train && dp_step) {
      wait(stream, count_ready);  // the step's scale, from every rank's count
      grad_scale = dp_scale;
    }
    for (int64_t c0 = 0; c0 < N; c0 += logits_chunk) {
      const int64_t n = std::min(logits_chunk, N - c0);
      // logits[n][V] = h[c0..][C] · W_headᵀ: fp32 accumulation, bf16 output, as Hugging
      // Face's bf16 training rounds lm_head's output before the fp32 softmax. (fp32 logits
      // were 4 B written by this GEMM and 8 B read by the loss kernel per logit: that
      // kernel alone took 4.77 ms of an 8192-token Llama-3.2-1B step on an H200.)
      cuda::GemmArgs g;
      g.M = n, g.N = V, g.K = C;
      g.A = h_final + c0 * C, g.lda = C;
      g.B = W(lm_head), g.trans_b = true, g.ldb = C;
      g.D = logits, g.d_type = cuda::DType::bf16, g.ldd = V;
      gemm->run(g, stream);
      // In training the gradient overwrites the logits (the kernel reads a row fully
      // before writing any of it), so one bf16 buffer holds both.
      bf16* dlogits = train ? logits : nullptr;
      cuda::cross_entropy_forward_backward(dlogits, loss_rows + c0, logits, targets() + c0, n, V, kIgnoreIndex,
                                           grad_scale, stream);
      if (!train) continue;
      // The head's backward for this chunk, while its dlogits exist: dh = dlogits · W,
      // dW += dlogitsᵀ · h.
      cuda::linear_backward_input(*gemm, dh + c0 * C, C, dlogits, V, W(lm_head), n, C, V, 0.0f, stream);
      if (G(lm_head))
        cuda::linear_backward_weight(*gemm, G(lm_head), dlogits, V, h_final + c0 * C, C, n, C, V, stream);
    }
    cuda::loss_accumulate(&forward_loss->loss_sum, &forward_loss->count, loss_rows, targets(), N, kIgnoreIndex, stream);
    if (train) cuda::loss_accumulate(&state->loss_sum, &state->count, loss_rows, targets(), N, kIgnoreIndex, stream);
  }

  // Runs `enqueue` between two recorded events when timing attention.
  template <typename Fn>
  void timed(Fn enqueue) {
    if (!opt.time_attention) return enqueue();
    while (timing_events.size() < timing_used + 2) {
      cudaEvent_t e;
      ADEPT_CUDA_CHECK(cudaEventCreate(&e));
      timing_events.push_back(e);
    }
    ADEPT_CUDA_CHECK(cudaEventRecord(timing_events[timing_used], stream));
    enqueue();
    ADEPT_CUDA_CHECK(cudaEventRecord(timing_events[timing_used + 1], stream));
    timing_used += 2;
  }

  // After a synchronisation: the sum over the recorded pairs, then the pool is reused.
  void collect_attention_time() {
    attention_ms = 0.0;
    for (size_t i = 0; i + 1 < timing_used; i += 2) {
      float ms = 0.0f;
      ADEPT_CUDA_CHECK(cudaEventElapsedTime(&ms, timing_events[i], timing_events[i + 1]));
      attention_ms += ms;
    }
    timing_used = 0;
  }

  bool layer_trainable(int64_t l) const {
    for (int i : layers[l].all())
      if (tensors[i].trainable) return true;
    return false;
  }

  void enqueue_backward() {
    // Layers below the lowest one holding a trainable tensor need no gradient at all.
    int64_t lowest = tensors[embed].trainable ? -1 : L;
    for (int64_t l = 0; l < L && lowest == L; ++l)
      if (!skip[l] && layer_trainable(l)) lowest = l;

    // dh holds d(h_final), written by the chunked cross-entropy.
    gradients_begin(int(L) + 1);
    cuda::rmsnorm_backward(dx, G(final_norm), partials, dh, x[L], W(final_norm), rstd_final, nullptr, N, C, stream);
    for (int64_t l = L - 1; l >= 0 && l >= lowest; --l) {
      units_done(int(l) + 2);  // the head and layers above l are final
      gradients_begin(int(l) + 1);
      if (skip[l]) continue;
      const Layer& y = layers[l];
      LayerActivations& a = acts[l];
      // x3 = x2 + down(swiglu(gate(h2), up(h2))),  h2 = norm(x2)
      cuda::linear_backward_input(*gemm, dact, I, dx, C, W(y.down), N, I, C, 0.0f, stream);
      if (opt.recompute) cuda::swiglu_forward(a.act, a.gateup, N, I, stream);
      if (G(y.down)) cuda::linear_backward_weight(*gemm, G(y.down), dx, C, a.act, I, N, I, C, stream);
      cuda::swiglu_backward(dgateup, dact, a.gateup, N, I, stream);
      cuda::linear_backward_input(*gemm, dh, C, dgateup, 2 * I, W(y.gate), N, C, 2 * I, 0.0f, stream);
      if (opt.recompute && (G(y.gate) || G(y.up)))
        cuda::rmsnorm_forward(a.h2, a.rstd2, a.x2, W(y.post_norm), N, C, c.rms_norm_eps, stream);
      group_weight_gradient({y.gate, y.up}, dgateup, 2 * I, a.h2, C);
      // dx ← d(x2): the residual's gradient plus the norm's, in one pass.
      cuda::rmsnorm_backward(dx, G(y.post_norm), partials, dh, a.x2, W(y.post_norm), a.rstd2, dx, N, C, stream);

      // x2 = x + o(attention(rope(norm_qk(qkv(h1))))),  h1 = norm(x)
      cuda::linear_backward_input(*gemm, dattn, Q, dx, C, W(y.o), N, Q, C, 0.0f, stream);
      if (G(y.o)) cuda::linear_backward_weight(*gemm, G(y.o), dx, C, a.attn, Q, N, Q, C, stream);
      if (G(y.o_bias)) cuda::bias_backward(G(y.o_bias), partials, dx, N, C, C, stream);
      timed([&] { attention->backward(dqkv, a.qkv, QKV, a.attn, dattn, a.lse, N, docs, stream); });
      if (c.has_qk_norm())
        cuda::qk_norm_rope_backward(dqkv, G(y.q_norm), G(y.k_norm), partials, a.qkv_raw, W(y.q_norm), W(y.k_norm),
                                    a.rstd_qk, positions(), rope_cos, rope_sin, N, QKV, Hq, Hkv, D, stream);
      else
        cuda::rope_backward(dqkv, positions(), rope_cos, rope_sin, N, QKV, Hq, Hkv, D, stream);
      cuda::linear_backward_input(*gemm, dh, C, dqkv, QKV, W(y.q), N, C, QKV, 0.0f, stream);
      if (opt.recompute && (G(y.q) || G(y.k) || G(y.v)))
        cuda::rmsnorm_forward(a.h1, a.rstd1, x[l], W(y.input_norm), N, C, c.rms_norm_eps, stream);
      group_weight_gradient({y.q, y.k, y.v}, dqkv, QKV, a.h1, C);
      group_bias_gradient({y.q_bias, y.k_bias, y.v_bias}, dqkv, QKV);
      cuda::rmsnorm_backward(dx, G(y.input_norm), partials, dh, x[l], W(y.input_norm), a.rstd1, dx, N, C, stream);
    }
    units_done(1);
    gradients_begin(0);
    if (G(embed)) {
      auto* b = batch_device;
      const BatchLayout& bl = batch_layout;
      cuda::embedding_backward(G(embed), dx, reinterpret_cast<const int32_t*>(b + bl.sorted_tokens),
                               reinterpret_cast<const int32_t*>(b + bl.segment_start),
                               reinterpret_cast<const int32_t*>(b + bl.segment_id),
                               reinterpret_cast<const int32_t*>(b + bl.num_segments), N, C, stream);
    }
    units_done(0);
  }

  // ---- data parallel: events, reduce-scatter under backward, all-gather under forward --
  // In a graph capture, events recorded or waited for across the graph's boundary are
  // external event nodes (the graph's launch records / waits for them).
  void record(cudaEvent_t e, cudaStream_t on) {
    ADEPT_CUDA_CHECK(cudaEventRecordWithFlags(e, on, capturing ? cudaEventRecordExternal : cudaEventRecordDefault));
  }
  void wait(cudaStream_t on, cudaEvent_t e) {
    ADEPT_CUDA_CHECK(cudaStreamWaitEvent(on, e, capturing ? cudaEventWaitExternal : cudaEventWaitDefault));
  }

  // The forward waits, bucket by bucket in forward order, for the all-gather that
  // brought the last update of its weights (an event never recorded is no wait).
  void begin_gathered_weights() { next_gather = dp() ? int(shard_plan.buckets.size()) - 1 : -1; }
  void weights_ready(int unit) {
    for (; next_gather >= 0 && shard_plan.buckets[next_gather].first_unit <= unit; --next_gather)
      if (shard_plan.buckets[next_gather].slice > 0) wait(stream, gathered[next_gather]);
  }

  // ZeRO-2: bucket k's buffer, zeroed, once the reduce-scatter of its previous user is
  // done (the same bucket in the last micro-batch, or the bucket before it in the turn).
  void acquire(int k) {
    if (!zero2() || acquired[k] || shard_plan.buckets[k].slice == 0) return;
    acquired[k] = 1;
    const int slot = bucket_slot[k];
    const int previous = slot < 0 ? k : slot_user[slot];
    if (previous >= 0) wait(stream, reduced[previous]);
    if (slot >= 0) slot_user[slot] = k;
    ADEPT_CUDA_CHECK(cudaMemsetAsync(bucket_grad[k], 0, size_t(shard_plan.buckets[k].padded()) * 4, stream));
  }
  // Backward is about to write unit `unit`'s gradients.
  void gradients_begin(int unit) {
    if (zero2() && reducing) acquire(shard_plan.unit_bucket[unit]);
  }

  // Marks, on `stream`, every bucket whose units are all final (units >= `unit`) and
  // reduce-scatters it on comm_stream (after the graph's launch when capturing). Does
  // nothing outside a reducing backward.
  void units_done(int unit) {
    if (!reducing) return;
    const std::vector<dist::Bucket>& buckets = shard_plan.buckets;
    while (next_bucket < buckets.size() && buckets[next_bucket].first_unit >= unit) {
      const int k = int(next_bucket++);
      if (buckets[k].slice == 0) continue;
      acquire(k);  // ZeRO-2: a bucket backward never reached (below the lowest trainable layer) sends zeros
      record(bucket_ready[k], stream);
      if (capturing)
        deferred.push_back(k);
      else
        reduce_scatter(k);
    }
  }

  void reduce_scatter(int k) {
    const dist::Bucket& b = shard_plan.buckets[k];
    ADEPT_CUDA_CHECK(cudaStreamWaitEvent(comm_stream, bucket_ready[k], 0));
    float* g = bucket_grad[k];
    if (!zero2()) {
      comm->reduce_scatter(g, grad_shard + b.shard_offset, size_t(b.slice), dist::DataType::f32, dist::ReduceOp::sum,
                           comm_stream);
      return;
    }
    // In place (the rank's slice of the buffer receives the sum), then into the shard.
    float* mine = g + int64_t(rank) * b.slice;
    comm->reduce_scatter(g, mine, size_t(b.slice), dist::DataType::f32, dist::ReduceOp::sum, comm_stream);
    cuda::accumulate_f32(grad_shard + b.shard_offset, mine, b.slice, comm_stream);
    ADEPT_CUDA_CHECK(cudaEventRecord(reduced[k], comm_stream));
  }

  void begin_reduction() {
    reducing = true;
    next_bucket = 0;
  }
  // Every bucket not yet marked (the embedding's, and those of layers backward skipped).
  void end_reduction() {
    units_done(0);
    reducing = false;
  }
  // `stream` waits for everything queued on comm_stream so far.
  void join_comm() {
    ADEPT_CUDA_CHECK(cudaEventRecord(comm_joined, comm_stream));
    ADEPT_CUDA_CHECK(cudaStreamWaitEvent(stream, comm_joined, 0));
  }
  void join_reduction() {
    join_comm();
    grads_reduced = true;
  }

  // train_step's start, data parallel: the step's counted targets summed over ranks and
  // turned into the gradient scale on the device, queued on comm_stream behind the last
  // step's all-gathers (the forward waits for it only at its cross-entropy).
  void start_data_parallel_step(int64_t counted) {
    *dp_count_host = counted;
    ADEPT_CUDA_CHECK(cudaMemcpyAsync(dp_count, dp_count_host, sizeof(int64_t), cudaMemcpyHostToDevice, comm_stream));
    comm->all_reduce(dp_count, dp_count, 1, dist::DataType::i64, dist::ReduceOp::sum, comm_stream);
    cuda::grad_scale_from_count(dp_scale, dp_count, comm_stream);
    ADEPT_CUDA_CHECK(cudaEventRecord(count_ready, comm_stream));
    dp_step = true;
  }

  // A sharded fp32 array (master, m, v or the reduced gradient) gathered bucket by bucket
  // into the bucket's gradient buffer; `take(tensor, values)` copies each trainable
  // tensor out before the next bucket (ZeRO-2's buffers take turns).
  template <typename Take>
  void gather_sharded(const float* shard, Take take) {
    join_comm();
    const std::vector<dist::Bucket>& buckets = shard_plan.buckets;
    for (size_t k = 0; k < buckets.size(); ++k) {
      const dist::Bucket& b = buckets[k];
      if (b.slice == 0) continue;
      comm->all_gather(shard + b.shard_offset, bucket_grad[k], size_t(b.slice), dist::DataType::f32, stream);
      comm->synchronize(stream);
      for (size_t i = 0; i < tensors.size(); ++i)
        if (tensors[i].state_offset >= 0 && bucket_of(int(i)) == int(k))
          take(tensors[i], bucket_grad[k] + (tensors[i].state_offset - b.offset));
    }
  }

  // Forward + backward of the prepared micro-batch. Data parallel: `reduce` reduce-
  // scatters its gradient as backward goes (the step's last micro-batch; ZeRO-2 every
  // one), `join` makes `stream` wait for the reductions (the last). Replayed from a CUDA
  // graph when this shape, document layout and role has been seen before.
  void run_micro_batch(bool reduce, bool join) {
    auto eager = [&] {
      enqueue_forward(true);
      if (reduce) begin_reduction();
      enqueue_backward();
      if (reduce) end_reduction();
    };
    const bool use_graphs = opt.cuda_graphs && graphs_ok && !opt.time_attention && !zero2();
    if (!use_graphs) {
      eager();
    } else {
      std::vector<int64_t> key{N, int64_t(reduce), int64_t(dp_step)};
      key.insert(key.end(), docs.cu_seqlens.begin(), docs.cu_seqlens.end());
      for (bool s : skip) key.push_back(s);
      auto it = graphs.find(key);
      if (it == graphs.end()) {
        // First sight: run eagerly (this also settles the attention backend and fills the
        // GEMM plan cache, so the capture below records only launches).
        if (graphs.size() < kMaxGraphs) graphs.emplace(key, Graph{});
        eager();
      } else {
        if (!it->second.exec) capture(it->second, reduce);
        if (it->second.exec) {
          ADEPT_CUDA_CHECK(cudaGraphLaunch(it->second.exec, stream));
          graph_replayed = true;
          for (int k : it->second.reduce) reduce_scatter(k);  // the collectives the graph marks ready
        } else {
          eager();
        }
      }
    }
    if (join) join_reduction();
  }

  // Records the micro-batch into g.exec, or turns graphs off (leaving g.exec null) when
  // capture fails. No collective is enqueued while capturing: the buckets the graph marks
  // ready go to g.reduce, reduce-scattered by the host after every launch.
  void capture(Graph& g, bool reduce) {
    cudaGraph_t graph = nullptr;
    ADEPT_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    capturing = true;
    deferred.clear();
    std::string why;
    try {
      enqueue_forward(true);
      if (reduce) begin_reduction();
      enqueue_backward();
      if (reduce) end_reduction();
    } catch (const std::exception& e) {
      why = e.what();
    }
    capturing = false;
    reducing = false;
    cudaError_t end = cudaStreamEndCapture(stream, &graph);
    cudaGraphExec_t exec = nullptr;
    if (why.empty() && end == cudaSuccess && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess) {
      g.exec = exec;
      g.reduce = deferred;
    } else {
      if (why.empty()) why = cudaGetErrorString(end != cudaSuccess ? end : cudaGetLastError());
      cudaGetLastError();  // clear the capture's error
      spdlog::warn("CUDA decoder: graph capture failed ({}); running without graphs", why);
      graphs_ok = false;
    }
    deferred.clear();  // failed: nothing was launched, the eager run enqueues them again
    if (graph) cudaGraphDestroy(graph);
  }

  void zero_gradients() {
    grads_reduced = false;
    if (zero2())
      ADEPT_CUDA_CHECK(cudaMemsetAsync(grad_shard, 0, size_t(shard_plan.shard_numel) * 4, stream));
    else
      ADEPT_CUDA_CHECK(cudaMemsetAsync(grads, 0, size_t(state_numel) * 4, stream));
    // loss_sum and count are adjacent in StepState.
    ADEPT_CUDA_CHECK(cudaMemsetAsync(&state->loss_sum, 0, sizeof(double) + sizeof(int64_t), stream));
  }

  CudaStepResult optimizer_step(double lr, double max_norm) {
    const AdamWConfig& ac = opt.adamw;
    state_host->lr = lr;
    state_host->max_norm = max_norm;
    // lr and max_norm are StepState's first two fields; the rest stays the device's.
    ADEPT_CUDA_CHECK(cudaMemcpyAsync(state, state_host, 2 * sizeof(double), cudaMemcpyHostToDevice, stream));
    if (dp()) {
      data_parallel_update();
    } else {
      cuda::grad_norm_partials(norm_partials, grads, state_numel, stream);
      cuda::grad_norm_finalize(state, norm_partials, float(ac.beta1), float(ac.beta2), stream);
      cuda::adamw_update(master, weights, grads, adam_m, adam_v, adam_tensors, adam_chunks, num_chunks,
                         row_multipliers, state, float(ac.beta1), float(ac.beta2), float(ac.eps), stream);
    }
    ADEPT_CUDA_CHECK(cudaMemcpyAsync(state_host, state, sizeof(cuda::StepState), cudaMemcpyDeviceToHost, stream));
    sync_stream();  // data parallel: within the collective timeout, never a silent hang
    collect_attention_time();
    CudaStepResult r;
    r.count = state_host->count;
    r.loss = r.count ? state_host->loss_sum / double(r.count) : 0.0;
    if (!std::isfinite(state_host->loss_sum)) r.loss = state_host->loss_sum;
    r.grad_norm = state_host->grad_norm;
    r.skipped = state_host->skip != 0;
    skipped_steps += r.skipped;
    steps_taken = state_host->t;
    return r;
  }

  // ZeRO's step (the design is at the data-parallel members above).
  void data_parallel_update() {
    const AdamWConfig& ac = opt.adamw;
    if (!grads_reduced && !zero2()) {  // backward() called directly (ZeRO-1): reduce everything now
      begin_reduction();
      end_reduction();
      join_reduction();
    }
    // Loss and count summed over ranks: the reported loss is the global mean, and a
    // non-finite loss anywhere skips the step everywhere.
    comm->all_reduce(&state->loss_sum, &state->loss_sum, 1, dist::DataType::f64, dist::ReduceOp::sum, stream);
    comm->all_reduce(&state->count, &state->count, 1, dist::DataType::i64, dist::ReduceOp::sum, stream);
    // ‖g‖² from every rank's slices: the per-block partial sums are summed over ranks,
    // then finalized identically everywhere (same clip, same skip, same bias correction).
    cuda::grad_norm_partials(norm_partials, grad_shard, shard_plan.shard_numel, stream);
    comm->all_reduce(norm_partials, norm_partials, cuda::kReduceBlocks, dist::DataType::f64, dist::ReduceOp::sum,
                     stream);
    cuda::grad_norm_finalize(state, norm_partials, float(ac.beta1), float(ac.beta2), stream);
    // The updated bf16 weights land in this rank's slices of the weights themselves.
    cuda::adamw_update(master, weights, grad_shard, adam_m, adam_v, adam_tensors, adam_chunks, num_chunks,
                       row_multipliers, state, float(ac.beta1), float(ac.beta2), float(ac.eps), stream);
    // Every rank's slices to every rank, in place, in the order the next forward needs
    // them; left running when the step returns (a skipped step gathers what is there).
    ADEPT_CUDA_CHECK(cudaEventRecord(adam_done, stream));
    ADEPT_CUDA_CHECK(cudaStreamWaitEvent(comm_stream, adam_done, 0));
    for (int k = int(shard_plan.buckets.size()) - 1; k >= 0; --k) {
      const dist::Bucket& b = shard_plan.buckets[k];
      if (b.slice == 0) continue;
      comm->all_gather(weights + b.offset + int64_t(rank) * b.slice, weights + b.offset, size_t(b.slice),
                       dist::DataType::bf16, comm_stream);
      ADEPT_CUDA_CHECK(cudaEventRecord(gathered[k], comm_stream));
    }
    grads_reduced = false;
  }
};

CudaDecoder::CudaDecoder(const ModelConfig& config, const ParameterStore<float>& host, CudaDecoderOptions options)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.describe(config, options);
  for (Tensor& t : s.tensors) t.trainable = host.info(host.index(t.name)).trainable;
  s.read_multipliers(host);
  s.start();
  s.upload_weights(host);
}

CudaDecoder::CudaDecoder(const ModelConfig& config, CudaDecoderOptions options, uint64_t seed, double init_std)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.describe(config, options);
  s.start();
  s.init_weights(seed, init_std);
}

CudaDecoder::~CudaDecoder() = default;

const ModelConfig& CudaDecoder::config() const { return impl_->c; }

cpu::CrossEntropyResult CudaDecoder::forward(const Batch& batch, const ForwardOptions& options) {
  Impl& s = *impl_;
  s.prepare_batch(batch, options, options.keep_activations);
  s.enqueue_forward(options.keep_activations);
  s.have_activations = options.keep_activations;
  ADEPT_CUDA_CHECK(cudaMemcpyAsync(s.forward_loss_host, s.forward_loss, sizeof(LossAccumulator),
                                   cudaMemcpyDeviceToHost, s.stream));
  s.sync_stream();
  cpu::CrossEntropyResult r;
  r.loss_sum = s.forward_loss_host->loss_sum;
  r.count = s.forward_loss_host->count;
  r.loss = r.count ? r.loss_sum / double(r.count) : 0.0;
  return r;
}

void CudaDecoder::backward() {
  Impl& s = *impl_;
  if (!s.have_activations) fail("CudaDecoder::backward called without a forward that kept activations");
  if (!s.zero2()) return s.enqueue_backward();
  // ZeRO-2 holds no whole gradient: backward reduce-scatters into the shard as it goes.
  s.begin_reduction();
  s.enqueue_backward();
  s.end_reduction();
  s.join_reduction();
}

void CudaDecoder::zero_gradients() { impl_->zero_gradients(); }

CudaStepResult CudaDecoder::optimizer_step(double lr, double max_grad_norm) {
  return impl_->optimizer_step(lr, max_grad_norm);
}

CudaStepResult CudaDecoder::train_step(const std::vector<Batch>& micro_batches, double lr, double max_grad_norm) {
  Impl& s = *impl_;
  // The loss is the mean over every counted target of the whole step, so each
  // micro-batch's gradient is scaled by 1 / (targets in all micro-batches).
  int64_t counted = 0;
  for (const Batch& b : micro_batches)
    for (int64_t n = 0; n < b.B * b.S; ++n) counted += b.targets[n] != kIgnoreIndex;
  ForwardOptions fo;
  fo.keep_activations = true;
  fo.grad_scale = counted ? 1.0 / double(counted) : 0.0;
  s.zero_gradients();
  // Data parallel: over every rank's micro-batches, as one GPU would count them (on the
  // device; the cross-entropy reads the scale from there).
  if (s.dp()) s.start_data_parallel_step(counted);
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    s.prepare_batch(micro_batches[i], fo, true);
    const bool last = i + 1 == micro_batches.size();
    s.run_micro_batch(s.dp() && (last || s.zero2()), s.dp() && last);
  }
  s.dp_step = false;
  s.have_activations = false;
  return s.optimizer_step(lr, max_grad_norm);
}

void CudaDecoder::copy_weights_to_host(ParameterStore<float>& host) const {
  Impl& s = *impl_;
  s.sync_stream();
  auto take = [&](const Tensor& t, const float* full) {
    ADEPT_CUDA_CHECK(cudaMemcpy(host.value(host.index(t.name)), full, size_t(t.numel) * 4, cudaMemcpyDeviceToHost));
  };
  if (s.dp()) return s.gather_sharded(s.master, take);
  for (const Tensor& t : s.tensors)
    if (t.trainable) take(t, s.master + t.state_offset);
}

void CudaDecoder::copy_gradients_to_host(ParameterStore<float>& host) const {
  Impl& s = *impl_;
  s.sync_stream();
  const float mean = s.dp() ? 1.0f / float(s.world) : 1.0f;
  auto take = [&](const Tensor& t, const float* g_device) {
    float* g = host.grad(host.index(t.name));
    if (!g) fail("{} trains on the GPU but has no gradient slot in the host store", t.name);
    ADEPT_CUDA_CHECK(cudaMemcpy(g, g_device, size_t(t.numel) * 4, cudaMemcpyDeviceToHost));
    if (s.dp())
      for (int64_t j = 0; j < t.numel; ++j) g[j] *= mean;
  };
  if (s.zero2()) return s.gather_sharded(s.grad_shard, take);  // backward reduced it
  if (s.dp()) {
    s.join_comm();
    s.comm->all_reduce(s.grads, s.grads, size_t(s.state_numel), dist::DataType::f32, dist::ReduceOp::sum, s.stream);
    s.comm->synchronize(s.stream);
  }
  for (const Tensor& t : s.tensors)
    if (t.trainable) take(t, s.G(int(&t - s.tensors.data())));
}

void CudaDecoder::copy_optimizer_state_to_host(const ParameterStore<float>& host, std::vector<float>& first_moment,
                                               std::vector<float>& second_moment) const {
  Impl& s = *impl_;
  s.sync_stream();
  first_moment.assign(size_t(host.trainable_numel()), 0.0f);
  second_moment.assign(size_t(host.trainable_numel()), 0.0f);
  for (auto [moment, out] : {std::pair{s.adam_m, &first_moment}, std::pair{s.adam_v, &second_moment}}) {
    auto take = [&, out = out](const Tensor& t, const float* values) {
      const ParameterInfo& p = host.info(host.index(t.name));
      if (p.grad_offset < 0) fail("{} trains on the GPU but has no gradient slot in the host store", t.name);
      ADEPT_CUDA_CHECK(cudaMemcpy(out->data() + p.grad_offset, values, size_t(t.numel) * 4, cudaMemcpyDeviceToHost));
    };
    if (s.dp()) {
      s.gather_sharded(moment, take);
    } else {
      for (const Tensor& t : s.tensors)
        if (t.trainable) take(t, moment + t.state_offset);
    }
  }
}

void CudaDecoder::load_optimizer_state(const ParameterStore<float>& host, const std::vector<float>& first_moment,
                                       const std::vector<float>& second_moment, int64_t steps_taken) {
  Impl& s = *impl_;
  const size_t n = size_t(host.trainable_numel());
  if (first_moment.size() != n || second_moment.size() != n)
    fail("optimizer state has {} / {} moments, the trainable tensors hold {}", first_moment.size(),
         second_moment.size(), n);
  if (steps_taken < 0) fail("optimizer state: {} steps taken", steps_taken);
  s.sync_stream();
  if (s.dp()) {
    // This rank's shard of the host layout (saved on any number of ranks): no collective.
    std::vector<int64_t> host_offset(s.tensors.size(), -1);
    for (const dist::OwnedPiece& piece : s.owned) {
      const Tensor& t = s.tensors[piece.tensor];
      host_offset[piece.tensor] = host.info(host.index(t.name)).grad_offset;
      if (host_offset[piece.tensor] < 0) fail("{} trains on the GPU but has no gradient slot in the host store", t.name);
    }
    const int64_t n = s.shard_plan.shard_numel;
    for (auto [moment, values] : {std::pair{s.adam_m, &first_moment}, std::pair{s.adam_v, &second_moment}}) {
      std::vector<float> shard = dist::shard_from_host(s.owned, host_offset, values->data(), n);
      s.upload(moment, shard.data(), size_t(n) * 4);
      s.sync_stream();  // `shard` goes out of scope
    }
  }
  for (const Tensor& t : s.tensors) {
    if (!t.trainable || s.dp()) continue;
    const ParameterInfo& p = host.info(host.index(t.name));
    if (p.grad_offset < 0) fail("{} trains on the GPU but has no gradient slot in the host store", t.name);
    const size_t bytes = size_t(t.numel) * 4;
    s.upload(s.adam_m + t.state_offset, first_moment.data() + p.grad_offset, bytes);
    s.upload(s.adam_v + t.state_offset, second_moment.data() + p.grad_offset, bytes);
  }
  // The step counter lives in the device's StepState (the update kernel advances it).
  ADEPT_CUDA_CHECK(cudaMemcpyAsync(s.state_host, s.state, sizeof(cuda::StepState), cudaMemcpyDeviceToHost, s.stream));
  s.sync_stream();
  s.state_host->t = steps_taken;
  s.upload(s.state, s.state_host, sizeof(cuda::StepState));
  s.sync_stream();
  s.steps_taken = steps_taken;
}

void CudaDecoder::set_learning_rate_multipliers(const ParameterStore<float>& host) {
  impl_->read_multipliers(host);
  impl_->upload_optimizer_tables();
}

int64_t CudaDecoder::steps_taken() const { return impl_->steps_taken; }
int64_t CudaDecoder::skipped_steps() const { return impl_->skipped_steps; }

std::string CudaDecoder::attention_backend() const {
  const cuda::Attention& a = *impl_->attention;
  if (a.forward_impl() == a.backward_impl()) return cuda::attention_impl_name(a.forward_impl());
  return std::string(cuda::attention_impl_name(a.forward_impl())) + " (forward) / " +
         cuda::attention_impl_name(a.backward_impl()) + " (backward)";
}

size_t CudaDecoder::device_bytes() const { return impl_->arena.bytes(); }
size_t CudaDecoder::optimizer_state_bytes() const { return size_t(impl_->optimizer_numel()) * 3 * sizeof(float); }
size_t CudaDecoder::gradient_bytes() const {
  const Impl& s = *impl_;
  int64_t n = s.zero2() ? (s.head_bucket >= 0 ? s.shard_plan.buckets[s.head_bucket].padded() : 0) + 2 * s.ring_numel
                        : s.state_numel;
  if (s.dp()) n += s.shard_plan.shard_numel;
  return size_t(n) * sizeof(float);
}
int CudaDecoder::zero_stage() const { return impl_->dp() ? impl_->zero_stage : 0; }
int CudaDecoder::data_parallel_world() const { return impl_->world; }
std::string CudaDecoder::memory_report() const { return impl_->arena.report(); }
bool CudaDecoder::graphs_active() const { return impl_->graph_replayed; }
double CudaDecoder::attention_milliseconds() const { return impl_->attention_ms; }

}  // namespace adept
