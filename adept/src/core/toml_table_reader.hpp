// Typed reads out of one [section] of a TOML file, with errors that name the file, the
// key and the expected type, and a check that rejects keys nobody read (typos).
#pragma once

#include <toml++/toml.h>

#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.hpp"

namespace adept {

class TomlTableReader {
 public:
  TomlTableReader(const toml::table& root, std::string section, std::string source)
      : source_(std::move(source)), section_(std::move(section)) {
    if (const toml::node* node = root.get(section_)) {
      table_ = node->as_table();
      if (!table_) fail("{}: [{}] must be a table", source_, section_);
    }
  }

  // Leaves `out` unchanged when the key is absent.
  template <typename T>
  void read(const char* key, T& out) {
    used_.insert(key);
    if (!table_) return;
    const toml::node* node = table_->get(key);
    if (!node) return;
    if constexpr (is_vector<T>::value) {
      const toml::array* array = node->as_array();
      if (!array) fail("{}: {}.{} must be an array", source_, section_, key);
      T values;
      for (const toml::node& element : *array) values.push_back(scalar<typename T::value_type>(element, key));
      out = std::move(values);
    } else {
      out = scalar<T>(*node, key);
    }
  }

  // Call after all reads: any key not read is a mistake in the file.
  void reject_unknown_keys() const {
    if (!table_) return;
    for (const auto& [key, value] : *table_)
      if (!used_.count(std::string(key.str())))
        fail("{}: unknown key {}.{}", source_, section_, std::string(key.str()));
  }

 private:
  template <typename T>
  struct is_vector : std::false_type {};
  template <typename T>
  struct is_vector<std::vector<T>> : std::true_type {};

  template <typename T>
  T scalar(const toml::node& node, const char* key) const {
    if constexpr (std::is_same_v<T, bool>) {
      // node.value<bool>() would also take an integer (3 -> true): booleans only.
      if (node.is_boolean()) return *node.value<bool>();
    } else if constexpr (std::is_integral_v<T>) {
      if (node.is_integer()) {
        int64_t v = *node.value<int64_t>();
        if (std::is_unsigned_v<T> && v < 0) fail("{}: {}.{} must not be negative, got {}", source_, section_, key, v);
        return T(v);
      }
    } else if constexpr (std::is_floating_point_v<T>) {
      if (auto v = node.value<double>()) return T(*v);
    } else {
      if (auto v = node.value<std::string>()) return *v;
    }
    fail("{}: {}.{} has the wrong type (expected {})", source_, section_, key, type_name<T>());
  }

  template <typename T>
  static const char* type_name() {
    if constexpr (std::is_same_v<T, bool>) return "a boolean";
    else if constexpr (std::is_integral_v<T>) return "an integer";
    else if constexpr (std::is_floating_point_v<T>) return "a number";
    else return "a string";
  }

  std::string source_, section_;
  const toml::table* table_ = nullptr;
  std::set<std::string> used_;
};

}  // namespace adept
