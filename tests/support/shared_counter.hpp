// SPDX-License-Identifier: MIT
// A counter that the test process and its pool's workers share.
#pragma once

#include <sys/mman.h>

#include <atomic>
#include <new>
#include <stdexcept>

namespace multicore_test {

/// Anonymous shared memory for one std::atomic<int>, visible to workers forked after it is made
/// (so make it before the Pool).
class SharedCounter {
 public:
  SharedCounter() {
    void* p = mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
    counter_ = new (p) std::atomic<int>(0);
  }
  ~SharedCounter() { munmap(counter_, sizeof(std::atomic<int>)); }
  SharedCounter(const SharedCounter&) = delete;
  SharedCounter& operator=(const SharedCounter&) = delete;

  std::atomic<int>& operator*() const { return *counter_; }
  std::atomic<int>* get() const { return counter_; }

 private:
  std::atomic<int>* counter_ = nullptr;
};

}  // namespace multicore_test
