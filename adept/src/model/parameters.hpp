// Every trainable or frozen tensor of a model, by its Hugging Face name, in one values
// buffer and one gradients buffer (llm.c's "memory you can see"). A frozen tensor has no
// gradient slot and, in the optimizer, no state. Per-tensor and per-row learning-rate
// multipliers live here too, because ADEPT sets them per parameter unit.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/error.hpp"

namespace adept {

struct ParameterInfo {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  int64_t offset = 0;        // into values
  int64_t grad_offset = -1;  // into gradients; -1 when frozen or not allocated
  bool trainable = true;
  bool weight_decay = true;           // matrices decay; norms and biases do not
  float lr_multiplier = 1.0f;         // per tensor
  std::vector<float> row_multiplier;  // optional, one per output row (shape[0])
};

template <typename T>
class ParameterStore {
 public:
  // Registers a tensor (before allocate()). Returns its index.
  int add(const std::string& name, std::vector<int64_t> shape, bool weight_decay) {
    if (allocated_) fail("parameter '{}' added after the store was allocated", name);
    if (by_name_.count(name)) fail("parameter '{}' registered twice", name);
    ParameterInfo p;
    p.name = name;
    p.numel = 1;
    for (int64_t s : shape) p.numel *= s;
    p.shape = std::move(shape);
    p.offset = total_;
    p.weight_decay = weight_decay;
    total_ += p.numel;
    by_name_[name] = int(infos_.size());
    infos_.push_back(std::move(p));
    return int(infos_.size()) - 1;
  }

  void allocate() {
    values_.assign(total_, T(0));
    allocated_ = true;
    allocate_gradients();
  }

  // (Re)lays out the gradient buffer over the tensors currently trainable, zeroed.
  void allocate_gradients() {
    int64_t g = 0;
    for (ParameterInfo& p : infos_) {
      p.grad_offset = p.trainable ? g : -1;
      if (p.trainable) g += p.numel;
    }
    grads_.assign(g, T(0));
  }

  void set_trainable(int i, bool trainable) { infos_.at(i).trainable = trainable; }
  void zero_gradients() { std::fill(grads_.begin(), grads_.end(), T(0)); }

  int size() const { return int(infos_.size()); }
  const ParameterInfo& info(int i) const { return infos_.at(i); }
  ParameterInfo& info(int i) { return infos_.at(i); }
  int find(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? -1 : it->second;
  }
  int index(const std::string& name) const {
    int i = find(name);
    if (i < 0) fail("no parameter named '{}'", name);
    return i;
  }

  T* value(int i) { return values_.data() + infos_[i].offset; }
  const T* value(int i) const { return values_.data() + infos_[i].offset; }
  // nullptr for a frozen tensor: backward passes skip its weight gradient.
  T* grad(int i) { return infos_[i].grad_offset < 0 ? nullptr : grads_.data() + infos_[i].grad_offset; }
  const T* grad(int i) const {
    return infos_[i].grad_offset < 0 ? nullptr : grads_.data() + infos_[i].grad_offset;
  }

  int64_t total_numel() const { return total_; }
  int64_t trainable_numel() const { return int64_t(grads_.size()); }
  std::vector<T>& values() { return values_; }
  const std::vector<T>& values() const { return values_; }
  std::vector<T>& gradients() { return grads_; }
  const std::vector<T>& gradients() const { return grads_; }

 private:
  std::vector<ParameterInfo> infos_;
  std::unordered_map<std::string, int> by_name_;
  std::vector<T> values_, grads_;
  int64_t total_ = 0;
  bool allocated_ = false;
};

}  // namespace adept
