// SPDX-License-Identifier: MIT
// Persistent database connections: each worker opens one SQLite connection when it starts and
// reuses it for every task it runs.
#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <multicore/multicore.hpp>
#include <set>
#include <string>
#include <utility>

const std::string path = std::filesystem::temp_directory_path() /
                         ("multicore_db_per_worker_" + std::to_string(getpid()) + ".sqlite");

sqlite3* db = nullptr;       // each worker has its own copy of these globals
int connections_opened = 0;  // in this process

void open_connection() {  // on_worker_start: runs once in every worker
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK)
    throw std::runtime_error("cannot open " + path);
  ++connections_opened;
}

struct Answer {  // trivially copyable: crosses the process boundary as raw bytes
  long sum;
  int pid, connection;  // which process ran the query, on which of its connections
};

Answer sum_of_squares(int first, int last) {  // a task: uses the worker's open connection
  sqlite3_stmt* query = nullptr;
  sqlite3_prepare_v2(db, "SELECT sum(square) FROM squares WHERE n BETWEEN ?1 AND ?2", -1, &query,
                     nullptr);
  sqlite3_bind_int(query, 1, first);
  sqlite3_bind_int(query, 2, last);
  const long sum = sqlite3_step(query) == SQLITE_ROW ? sqlite3_column_int64(query, 0) : -1;
  sqlite3_finalize(query);
  return {sum, static_cast<int>(getpid()), connections_opened};
}

int main() {
  struct Cleanup {  // runs in this process only: workers leave with _exit, skipping destructors
    ~Cleanup() { std::filesystem::remove(path); }
  } cleanup;
  // Make the database before the pool: workers open it as they start. (Open connections in the
  // worker: an SQLite connection must not be carried across fork.)
  sqlite3* setup = nullptr;
  sqlite3_open(path.c_str(), &setup);
  sqlite3_exec(setup,
               "CREATE TABLE squares(n INTEGER PRIMARY KEY, square INTEGER);"
               "WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < 1000)"
               "INSERT INTO squares SELECT n, n * n FROM k;",
               nullptr, nullptr, nullptr);
  sqlite3_close(setup);

  multicore::Pool pool({.on_worker_start = open_connection});
  multicore::Task<Answer> task(pool);
  const auto pieces = multicore::ranges(1000, 10 * pool.size());  // 10 queries per worker
  for (auto [begin, end] : pieces) task.run(sum_of_squares, int(begin) + 1, int(end));
  long total = 0;
  std::set<std::pair<int, int>> connections;  // distinct (pid, connection number) pairs
  for (const Answer& a : task.get()) {
    total += a.sum;
    connections.emplace(a.pid, a.connection);
  }
  const bool one_per_worker = connections.size() == pool.size();
  std::cout << pieces.size() << " queries on " << pool.size() << " workers used "
            << connections.size() << " connections"
            << (one_per_worker ? " (one per worker, not one per query)\n" : "\n")
            << "sum of the squares of 1..1000: " << total << '\n';
  return one_per_worker && total == 333'833'500 ? 0 : 1;
}
