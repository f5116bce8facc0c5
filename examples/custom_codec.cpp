// SPDX-License-Identifier: MIT
// Your own types across the process boundary: give them a cereal serialize() function, or
// specialise multicore::Codec<T> to write the bytes yourself.
#include <cstdint>
#include <iomanip>
#include <iostream>
#include <map>
#include <multicore/multicore.hpp>
#include <string>
#include <utility>
#include <vector>

// A type cereal can save: an order of (item, quantity) lines.
struct Order {
  std::string customer;
  std::vector<std::pair<std::string, int>> lines;
  template <class Archive>
  void serialize(Archive& archive) {
    archive(customer, lines);
  }
};

// A type with no serialize() (say, from a header you cannot change): encoded by a Codec.
struct Money {
  std::string currency;
  std::int64_t cents = 0;
};

template <>
struct multicore::Codec<Money> {
  static void encode(multicore::Writer& out, const Money& m) {
    const auto size = static_cast<std::uint32_t>(m.currency.size());
    out.write(&m.cents, sizeof m.cents);
    out.write(&size, sizeof size);
    out.write(m.currency.data(), size);
  }
  static Money decode(multicore::Reader& in) {  // reads are bounds-checked: corrupt data throws
    Money m;
    std::uint32_t size = 0;
    in.read(&m.cents, sizeof m.cents);
    in.read(&size, sizeof size);
    const auto bytes = in.take(size);
    m.currency.assign(reinterpret_cast<const char*>(bytes.data()), size);
    return m;
  }
};

const std::map<std::string, std::int64_t> price_list{{"tea", 350}, {"cake", 425}};  // cents

Money total(const Order& order) {
  std::int64_t cents = 0;
  for (const auto& [item, quantity] : order.lines) cents += price_list.at(item) * quantity;
  return {"EUR", cents};
}

std::ostream& operator<<(std::ostream& out, const Money& m) {
  return out << m.cents / 100 << '.' << std::setw(2) << std::setfill('0') << m.cents % 100 << ' '
             << m.currency;
}

int main() {
  multicore::Pool pool;
  const Order order{"Ada", {{"tea", 2}, {"cake", 1}}};
  std::cout << order.customer << " owes " << pool.submit(total, order).get() << " (binary)\n";

  multicore::Task<Money> task(pool, {.format = multicore::Format::json});  // cereal's JSON
  task.run(total, order);
  std::cout << order.customer << " owes " << task.get().front() << " (json)\n";
}
