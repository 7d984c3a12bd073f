#pragma once

// What the C ABI's translation units share: the generation-counted handle tables, the one way a
// call turns exceptions into a status, struct_size checks, and DLPack conversions.

#ifndef APO_BUILDING_LIBRARY
#define APO_BUILDING_LIBRARY
#endif
#include "apo/apo.h"

#include <ATen/ATen.h>
#include <ATen/DLConvertor.h>
#include <ATen/dlpack.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "apo/core/current_error.hpp"
#include "apo/core/error.hpp"

namespace apo {
struct Config;
}  // namespace apo

namespace apo::capi {

// The ABI's layouts are written down for 64-bit platforms (libtorch supports no other).
static_assert(sizeof(void*) == 8 && sizeof(std::size_t) == 8,
              "apo's C ABI is defined for 64-bit platforms");

/// @brief The types a handle can be of; the tag sits in a handle's top byte so that a handle of
/// one type is never taken for another.
enum class HandleType : std::uint8_t {
  config = 0xa1,
  engine = 0xa2,
  ticket = 0xa3,
  run_context = 0xa4,
  model_lease = 0xa5,
  monitor = 0xa6,
};

/// @brief Live objects of one handle type. A handle is (tag << 56) | (generation << 32) |
/// (slot + 1): freeing a slot bumps its generation, so a stale handle never matches again; a slot
/// whose generation would wrap is retired instead of reused. Lookups hand out shared_ptrs, so an
/// object freed while another thread uses it is destroyed when that thread lets go.
template <class Object>
class HandleTable {
 public:
  HandleTable(HandleType type, const char* type_name) : type_(type), type_name_(type_name) {}

  const char* type_name() const noexcept { return type_name_; }

  std::uintptr_t add(std::shared_ptr<Object> object) {
    const std::unique_lock lock(mutex_);
    std::uint32_t index;
    if (!free_.empty()) {
      index = free_.back();
      free_.pop_back();
    } else {
      if (slots_.size() >= kMaxSlots) {
        throw Error(ErrorCode::OutOfMemory,
                    std::string("too many live handles of type ") + type_name_);
      }
      slots_.emplace_back();
      index = static_cast<std::uint32_t>(slots_.size() - 1);
    }
    Slot& slot = slots_[index];
    slot.object = std::move(object);
    return encode(index, slot.generation);
  }

  /// @brief The object of a live handle; nullptr for any other value.
  std::shared_ptr<Object> find(std::uintptr_t handle) const {
    std::uint32_t index, generation;
    if (!decode(handle, index, generation)) return nullptr;
    const std::shared_lock lock(mutex_);
    if (index >= slots_.size() || slots_[index].generation != generation) return nullptr;
    return slots_[index].object;
  }

  /// @brief Ends a live handle and hands back its object (nullptr when it was not live): the
  /// caller lets go of it outside the table's lock.
  std::shared_ptr<Object> remove(std::uintptr_t handle) {
    std::uint32_t index, generation;
    if (!decode(handle, index, generation)) return nullptr;
    const std::unique_lock lock(mutex_);
    if (index >= slots_.size()) return nullptr;
    Slot& slot = slots_[index];
    if (slot.generation != generation || slot.object == nullptr) return nullptr;
    std::shared_ptr<Object> object = std::move(slot.object);
    slot.object.reset();
    if (slot.generation < kMaxGeneration) {
      ++slot.generation;
      free_.push_back(index);
    } else {
      slot.generation = 0;  // retired: 0 is never a live generation
    }
    return object;
  }

 private:
  static constexpr std::uint32_t kMaxGeneration = (1u << 24) - 1;
  static constexpr std::size_t kMaxSlots = 0xffffffffu - 1;

  struct Slot {
    std::shared_ptr<Object> object;
    std::uint32_t generation = 1;
  };

  std::uintptr_t encode(std::uint32_t index, std::uint32_t generation) const noexcept {
    return (static_cast<std::uintptr_t>(type_) << 56) |
           (static_cast<std::uintptr_t>(generation) << 32) |
           (static_cast<std::uintptr_t>(index) + 1);
  }

  bool decode(std::uintptr_t handle, std::uint32_t& index, std::uint32_t& generation) const {
    if ((handle >> 56) != static_cast<std::uintptr_t>(type_)) return false;
    generation = static_cast<std::uint32_t>((handle >> 32) & kMaxGeneration);
    const std::uintptr_t slot = handle & 0xffffffffu;
    if (generation == 0 || slot == 0) return false;
    index = static_cast<std::uint32_t>(slot - 1);
    return true;
  }

  const HandleType type_;
  const char* const type_name_;
  mutable std::shared_mutex mutex_;
  std::vector<Slot> slots_;
  std::vector<std::uint32_t> free_;
};

/// @brief The int a caller passed for a C enum. C lets any int through, but C++ may not load a
/// value outside the enum's range as the enum (UBSan's -fsanitize=enum): read its bytes instead.
template <class Enum>
int enum_value(const Enum& value) noexcept {
  static_assert(std::is_enum_v<Enum> && sizeof(Enum) == sizeof(int));
  int raw;
  std::memcpy(&raw, &value, sizeof raw);
  return raw;
}

/// @brief The handle value of a C handle pointer, and back.
template <class Handle>
std::uintptr_t handle_value(const Handle* handle) noexcept {
  return reinterpret_cast<std::uintptr_t>(handle);
}
template <class Handle>
Handle* handle_pointer(std::uintptr_t value) noexcept {
  return reinterpret_cast<Handle*>(value);
}

/// @brief The object of `handle`, or Error(InvalidArgument) naming the argument.
template <class Object, class Handle>
std::shared_ptr<Object> lookup(const HandleTable<Object>& table, const Handle* handle,
                               const char* argument) {
  if (handle == nullptr) {
    throw Error(ErrorCode::InvalidArgument, std::string(argument) + " is NULL");
  }
  std::shared_ptr<Object> object = table.find(handle_value(handle));
  if (object == nullptr) {
    throw Error(ErrorCode::InvalidArgument, std::string(argument) + " is not a live " +
                                                table.type_name() +
                                                " (freed, of another type, or never one)");
  }
  return object;
}

/// @brief Records the message of a failed call for apo_last_error.
apo_status set_error(apo_status status, const std::string& message) noexcept;

/// @brief The status and message of the exception being handled (current_error_report).
apo_status report_current_exception() noexcept;

/// @brief Runs `body`, turning every exception into a status and a message.
template <class Body>
apo_status guarded(Body&& body) noexcept {
  try {
    body();
    return APO_STATUS_OK;
  } catch (...) {
    return report_current_exception();
  }
}

/// @brief Throws Error(InvalidArgument, message) unless `condition`.
inline void require(bool condition, const char* message) {
  if (!condition) throw Error(ErrorCode::InvalidArgument, message);
}

/// @brief Throws Error(InvalidArgument) for a NULL struct or one smaller than its version 1.
void require_struct(const void* structure, std::size_t v1_size, const char* argument);

/// @brief The configuration of a live config handle (kept alive while the caller holds it).
std::shared_ptr<const Config> config_of(const apo_config* config);

/// @brief A malloc'ed copy, for apo_string_free.
char* copy_string(const std::string& text);

/// @brief The tensor a caller lends: a view of its memory (no copy, no ownership; copy what is
/// kept beyond the call). Throws InvalidArgument / Unsupported for what DLPack 1.x does not
/// allow or apo does not take (a device other than the CPU, a dtype torch lacks).
at::Tensor borrow_tensor(const DLManagedTensorVersioned* tensor, const char* argument);

/// @brief The tensor a caller hands over: its deleter runs when the returned tensor's memory is
/// released, or at once when it cannot be taken (then this throws).
at::Tensor consume_tensor(DLManagedTensorVersioned* tensor, const char* argument);

/// @brief A new DLPack tensor viewing `tensor` (no copy), for the caller to delete.
DLManagedTensorVersioned* export_tensor(const at::Tensor& tensor, bool read_only);

}  // namespace apo::capi
