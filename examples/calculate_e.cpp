// SPDX-License-Identifier: MIT
// Stopping a running task: a worker computes e until the application says stop, then returns
// what it has (the Python talk's calculate_e with an exit Event, as a StopToken).
#include <chrono>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <multicore/multicore.hpp>
#include <thread>
#include <utility>

/// Sums 1/n! until asked to stop; looks at the token every 1000 terms, as the talk does.
std::pair<double, long> calculate_e(multicore::StopToken stop) {
  double k = 1.0;
  double e = 0.0;
  long iteration = 0;
  while (iteration % 1000 != 0 || !stop.stop_requested()) {
    e += 1.0 / k;
    k *= static_cast<double>(iteration + 1);
    ++iteration;
  }
  return {e, iteration};
}

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 3.0;
  multicore::Pool pool;
  multicore::StopSource stop;
  auto e = pool.submit(calculate_e, stop.get_token());

  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));  // other useful work
  stop.request_stop();  // calculate_e sees it within a microsecond or so

  const auto [value, terms] = e.get();
  std::cout << std::setprecision(15) << "e = " << value << " (" << terms << " terms in " << seconds
            << " s)\n";

  // A task that carries a stopped token and has not started never runs.
  try {
    (void)pool.submit(calculate_e, stop.get_token()).get();
  } catch (const multicore::Cancelled& error) {
    std::cout << "after the stop: Cancelled (" << error.what() << ")\n";
  }
}
