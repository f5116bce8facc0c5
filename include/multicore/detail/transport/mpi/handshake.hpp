// SPDX-License-Identifier: MIT
// How the ranks meet (each shows its build, host and workers; rank 0 judges) and part (rank 0
// tells every agent to exit and waits until they have).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "../../util/code_ref.hpp"
#include "../shm/stop_table.hpp"
#include "mpi_api.hpp"
#include "relay.hpp"
#include "remote_transport.hpp"

namespace multicore::detail::mpi {

/// Bumped whenever what ranks say to each other changes.
inline constexpr int relay_version = 2;

/// What the ranks agreed on: every agent (on rank 0), or why they cannot work together.
struct Roster {
  std::vector<AgentInfo> agents;
  std::string error;  ///< the same on every rank; empty when all is well
};

/// This rank, as it shows itself to rank 0: one fact per line, modules last.
inline std::string card(unsigned workers, const std::string& problem) {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::ostringstream out;
  out << "version " << relay_version << "\nhost " << host << "\npid " << getpid() << "\nworkers "
      << workers << "\nproblem " << problem << "\n";
  for (const LoadedModule& m : ModuleTable::instance().modules()) {
    out << "module " << (m.build_id.empty() ? "-" : m.build_id) << " " << m.name << "\n";
  }
  return out.str();
}

struct Card {
  int version = 0;
  std::string host;
  unsigned workers = 0;
  std::string problem;
  std::vector<std::pair<std::string, std::string>> modules;  // build-id, name
};

inline Card read_card(const std::string& text) {
  Card c;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const std::size_t space = line.find(' ');
    const std::string key = line.substr(0, space);
    const std::string value = space == std::string::npos ? "" : line.substr(space + 1);
    if (key == "version") {
      c.version = std::atoi(value.c_str());
    } else if (key == "host") {
      c.host = value;
    } else if (key == "workers") {
      c.workers = static_cast<unsigned>(std::strtoul(value.c_str(), nullptr, 10));
    } else if (key == "problem") {
      c.problem = value;
    } else if (key == "module") {
      const std::size_t at = value.find(' ');
      c.modules.emplace_back(value.substr(0, at),
                             at == std::string::npos ? "" : value.substr(at + 1));
    }
  }
  return c;
}

/// The kernel's own modules (the vDSO) differ between machines and hold no user code.
inline bool kernel_module(const std::string& name) {
  return name.find("linux-vdso") != std::string::npos ||
         name.find("linux-gate") != std::string::npos;
}

/// Why rank `rank` (card `theirs`) cannot run code named by rank 0 (card `ours`), or "".
inline std::string mismatch(int rank, const Card& ours, const Card& theirs) {
  const std::string who = "multicore: rank " + std::to_string(rank) + " on " + theirs.host;
  if (!theirs.problem.empty()) return who + ": " + theirs.problem;
  if (theirs.version != ours.version) return who + " runs another version of multicore";
  if (theirs.workers == 0) return who + " has no worker";
  std::vector<std::pair<std::string, std::string>> a, b;
  for (const auto& m : ours.modules) {
    if (!kernel_module(m.second)) a.push_back(m);
  }
  for (const auto& m : theirs.modules) {
    if (!kernel_module(m.second)) b.push_back(m);
  }
  // Code is named by its module's index in load order (see code_ref.hpp): the lists must match
  // one for one. Two modules are the same when their build-ids are (wherever each was found),
  // or, without build-ids, their paths.
  const auto same = [](const auto& x, const auto& y) {
    return x.first != "-" && y.first != "-" ? x.first == y.first : x.second == y.second;
  };
  const auto holds = [](const auto& list, const std::string& name) {
    return std::any_of(list.begin(), list.end(), [&](const auto& m) { return m.second == name; });
  };
  const std::string same_modules =
      ": every rank must load the same modules in the same order (preload a tool such as "
      "valgrind on every rank or on none)";
  for (std::size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    if (i < a.size() && i < b.size() && same(a[i], b[i])) continue;
    if (i < a.size() && i < b.size() && a[i].second == b[i].second) {
      const std::string what = b[i].second.empty() ? "the executable" : b[i].second;
      return who + " runs a different build of " + what + " (build-id " + b[i].first +
             ") than rank 0 (" + a[i].first + ")";
    }
    if (i < b.size() && !holds(a, b[i].second)) {
      return who + " loads " + b[i].second + ", which rank 0 does not" + same_modules;
    }
    if (i < a.size() && !holds(b, a[i].second)) {
      return who + " does not load " + a[i].second + ", which rank 0 does" + same_modules;
    }
    return who + " loads " + b[i].second + " where rank 0 loads " + a[i].second + same_modules;
  }
  return {};
}

/// Every rank shows its card to rank 0, which judges and tells everyone its verdict.
/// Collective: every rank calls it once, right after MPI is initialised.
inline Roster meet(unsigned workers, const std::string& problem) {
  int rank = 0;
  int ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const std::string mine = card(workers, problem);
  const int size = static_cast<int>(mine.size());
  std::vector<int> sizes(rank == 0 ? static_cast<std::size_t>(ranks) : 0);
  check(MPI_Gather(&size, 1, MPI_INT, sizes.data(), 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Gather");
  std::vector<int> offsets(sizes.size());
  std::string all;
  if (rank == 0) {
    int total = 0;
    for (std::size_t r = 0; r < sizes.size(); ++r) {
      offsets[r] = total;
      total += sizes[r];
    }
    all.resize(static_cast<std::size_t>(total));
  }
  check(MPI_Gatherv(mine.data(), size, MPI_CHAR, all.data(), sizes.data(), offsets.data(), MPI_CHAR,
                    0, MPI_COMM_WORLD),
        "MPI_Gatherv");
  Roster roster;
  if (rank == 0) {
    const Card ours = read_card(mine);
    if (!ours.problem.empty()) roster.error = "multicore: rank 0: " + ours.problem;
    for (int r = 1; r < ranks && roster.error.empty(); ++r) {
      const Card theirs =
          read_card(all.substr(static_cast<std::size_t>(offsets[static_cast<std::size_t>(r)]),
                               static_cast<std::size_t>(sizes[static_cast<std::size_t>(r)])));
      roster.error = mismatch(r, ours, theirs);
      roster.agents.push_back({r, theirs.workers, theirs.host});
    }
  }
  int length = static_cast<int>(roster.error.size());
  check(MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Bcast");
  roster.error.resize(static_cast<std::size_t>(length));
  check(MPI_Bcast(roster.error.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD), "MPI_Bcast");
  if (!roster.error.empty()) roster.agents.clear();
  // Each agent mirrors rank 0's stop flags (see StopTable), so that its workers see rank 0's
  // tokens stop: a token names its table by id.
  std::uint64_t table = rank == 0 ? stop_table().id : 0;
  check(MPI_Bcast(&table, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD), "MPI_Bcast");
  if (rank != 0) stop_table().mirror_id.store(table, std::memory_order_release);
  return roster;
}

/// Rank 0: tells every agent to exit and waits until each says bye (it has stopped its workers
/// by then). Bounded: an agent that does not answer within a minute aborts the job.
inline void say_goodbye(const std::vector<AgentInfo>& agents) noexcept {
  try {
    Outbox out(tag_down);
    std::vector<Inbox> inboxes;
    std::vector<char> gone(agents.size(), 0);
    for (const AgentInfo& a : agents) {
      Header exit;
      exit.kind = Kind::exit;
      out.post(a.rank, exit, {});
      inboxes.emplace_back(a.rank, tag_up);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(1);
    for (std::size_t left = agents.size(); left > 0;) {
      out.progress();
      for (std::size_t i = 0; i < agents.size(); ++i) {
        if (gone[i] != 0) continue;
        while (std::optional<Message> m = inboxes[i].poll()) {
          if (m->header.kind == Kind::bye) {
            gone[i] = 1;
            --left;
            break;
          }
        }
      }
      if (std::chrono::steady_clock::now() > deadline) {
        std::fputs("multicore: a node agent did not exit within a minute; aborting the job\n",
                   stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
      usleep(100);
    }
    while (!out.empty()) out.progress();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "multicore: leaving the cluster failed: %s; aborting the job\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
}

}  // namespace multicore::detail::mpi
