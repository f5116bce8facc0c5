// SPDX-License-Identifier: MIT
// A user type that goes through cereal (member serialize()), in binary and JSON.
#pragma once

#include <cereal/cereal.hpp>
#include <string>
#include <vector>

// In an unnamed namespace, as the test files keep their own types: error messages then name it
// plain "Person" (multicore drops "(anonymous namespace)::"), which some tests look for.
namespace {

struct Person {
  std::string name;
  int age = 0;
  std::vector<std::string> tags;
  template <class Archive>
  void serialize(Archive& archive) {
    archive(CEREAL_NVP(name), CEREAL_NVP(age), CEREAL_NVP(tags));
  }
  friend bool operator==(const Person&, const Person&) = default;
};

}  // namespace
