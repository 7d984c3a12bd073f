// The scheduler's internal structures against std containers: the indexed heap and the id index.

#include "apo_catch.hpp"

#include <map>
#include <random>
#include <set>
#include <unordered_map>
#include <vector>

#include "apo/sched/detail/id_index.hpp"
#include "apo/sched/detail/indexed_heap.hpp"

using apo::sched::detail::HeapEntry;
using apo::sched::detail::IdIndex;
using apo::sched::detail::IndexedHeap;
using apo::sched::detail::kNotInHeap;

TEST_CASE("scheduler internals against std containers", "[sched][internals]") {
  SECTION("IdIndex agrees with std::unordered_map under random inserts and erases") {
    std::mt19937_64 random(3);
    IdIndex index;
    std::unordered_map<std::uint64_t, std::uint32_t> model;
    std::vector<std::uint64_t> ids;
    for (int step = 0; step < 200000; ++step) {
      const auto op = random() % 3;
      if (op < 2 || ids.empty()) {
        // Clustered ids (sequential and nearby) make long probe runs, the case erase must get
        // right.
        const std::uint64_t id = (random() % 4 == 0) ? random() : 1000000 + random() % 50000;
        if (model.count(id)) continue;
        const auto slot = static_cast<std::uint32_t>(random() % 1000000);
        index.insert(id, slot);
        model[id] = slot;
        ids.push_back(id);
      } else {
        const std::size_t pick = random() % ids.size();
        index.erase(ids[pick]);
        model.erase(ids[pick]);
        ids[pick] = ids.back();
        ids.pop_back();
      }
      if (step % 20000 == 0) {
        REQUIRE(index.size() == model.size());
        for (const auto& [id, slot] : model) REQUIRE(index.find(id) == slot);
      }
      if (step % 100 == 0) {
        for (int probe = 0; probe < 50; ++probe) {
          const std::uint64_t id = 1000000 + random() % 60000;
          CHECK(index.find(id).has_value() == (model.count(id) == 1));
        }
      }
    }
    index.erase(123456789);  // absent: nothing happens
    CHECK(index.size() == model.size());
  }
  SECTION("IndexedHeap pops in order and removes any entry") {
    std::mt19937_64 random(5);
    IndexedHeap heap;
    std::vector<std::uint32_t> positions(1000, kNotInHeap);
    std::set<std::tuple<std::int64_t, std::uint64_t, std::uint32_t>> model;
    std::uint64_t seq = 0;
    std::vector<std::uint32_t> free_slots;
    for (std::uint32_t s = 0; s < 1000; ++s) free_slots.push_back(s);
    for (int step = 0; step < 50000; ++step) {
      const auto op = random() % 4;
      if ((op < 2 && !free_slots.empty()) || model.empty()) {
        const std::uint32_t slot = free_slots.back();
        free_slots.pop_back();
        const HeapEntry entry{static_cast<std::int64_t>(random() % 1000) - 500, seq++, slot};
        heap.push(entry, positions);
        model.insert({entry.key, entry.seq, slot});
      } else if (op == 2) {
        REQUIRE(heap.top().slot == std::get<2>(*model.begin()));
        const std::uint32_t slot = heap.top().slot;
        heap.erase(0, positions);
        model.erase(model.begin());
        free_slots.push_back(slot);
        CHECK(positions[slot] == kNotInHeap);
      } else {
        // Remove or re-key an arbitrary entry through its position.
        auto it = model.begin();
        std::advance(it, static_cast<long>(random() % model.size()));
        const auto [key, entry_seq, slot] = *it;
        REQUIRE(heap.at(positions[slot]).slot == slot);
        model.erase(it);
        if (random() % 2) {
          heap.erase(positions[slot], positions);
          free_slots.push_back(slot);
        } else {
          const HeapEntry rekeyed{key + static_cast<std::int64_t>(random() % 200) - 100, seq++,
                                  slot};
          heap.replace(positions[slot], rekeyed, positions);
          model.insert({rekeyed.key, rekeyed.seq, slot});
        }
      }
      if (step % 100 == 0) REQUIRE(heap.size() == model.size());
    }
    while (!heap.empty()) {
      REQUIRE(heap.top().slot == std::get<2>(*model.begin()));
      heap.erase(0, positions);
      model.erase(model.begin());
    }
  }
}
