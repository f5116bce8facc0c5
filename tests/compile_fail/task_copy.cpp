// expect: Task<.*>::Task\(const multicore::Task<.*>&\)|deleted constructor of 'multicore::Task
// SPDX-License-Identifier: MIT
// Must not compile: copies of a Task would share one batch of results, which the first get()
// takes (the other would then hand out moved-from values).
#include <multicore/task.hpp>
#include <string>
#include <utility>

int main() {
  multicore::Pool pool;
  multicore::Task<std::string> task(pool);
  multicore::Task<std::string> moved = std::move(task);  // fine
  multicore::Task<std::string> copy = moved;
}
