// SPDX-License-Identifier: MIT
// The load-average gate: a Task checks the 1-minute load per usable core when it is made, and
// runs its calls inline, in the calling process, when the machine is busier than you allow.
#include <unistd.h>

#include <iostream>
#include <multicore/multicore.hpp>
#include <vector>

int process_id(int) { return static_cast<int>(getpid()); }

// Runs 4 calls through a Task with the given threshold and says where they ran.
bool run_gated(multicore::Pool& pool, double max_load_average) {
  multicore::Task<int> task(pool, {.max_load_average = max_load_average});
  for (int i = 0; i < 4; ++i) task.run(process_id, i);
  const std::vector<int> pids = task.get();
  bool here = true;  // did every call run in this process?
  for (int pid : pids) here = here && pid == getpid();
  std::cout << "max_load_average " << max_load_average << ": "
            << (task ? "parallel, in the pool" : "inline, in this process")
            << (here ? " (every call ran in this process)\n" : " (calls ran in workers)\n");
  return static_cast<bool>(task) != here;  // the gate's answer matches where the calls ran
}

int main() {
  multicore::Pool pool;
  std::cout << "load per usable core: " << multicore::load_average_per_core() << " on "
            << multicore::usable_cores() << " cores\n";

  // A threshold no machine reaches: the gate always opens.
  const bool high_ok = run_gated(pool, 1e9);
  // A tiny threshold: any load above zero closes the gate, so the calls run inline. (On an
  // idle machine whose load is exactly 0 the gate stays open.)
  const bool low_ok = run_gated(pool, 1e-9);
  return high_ok && low_ok ? 0 : 1;
}
