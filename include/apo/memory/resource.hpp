#pragma once

/// @file
/// @brief The MemoryResource concept with its contract, the request checks every resource
/// shares, and AnyResource: an owned, type-erased resource that pools and adaptors hold as their
/// upstream and that pooled tensors hold to keep their pool alive.

#include <bit>
#include <concepts>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "apo/core/device.hpp"
#include "apo/core/error.hpp"
#include "apo/core/units.hpp"

namespace apo::memory {

/// @brief The largest alignment any resource must honour: a host page. Larger requests are
/// rejected with InvalidArgument.
inline constexpr std::int64_t kMaxAlignment = 4096;
/// @brief What callers get when they do not ask: cudaMalloc's guarantee, enough for any dtype and
/// any SIMD load.
inline constexpr std::int64_t kDefaultAlignment = 256;
/// @brief Requests above this (4 PiB) fail with OutOfMemory before any arithmetic on them, so
/// that rounding a size up can never overflow.
inline constexpr std::int64_t kMaxAllocationBytes = std::int64_t{1} << 52;

/// @brief Where a resource's memory lives.
enum class MemoryKind : std::uint8_t {
  host,         ///< pageable host memory
  pinned_host,  ///< page-locked host memory (CUDA can copy it asynchronously)
  device,       ///< memory of one CUDA device
};

/// @brief A resource's memory kind and the device that memory belongs to: the CUDA device for
/// device memory, the CPU for host and pinned host memory.
struct MemorySpace {
  MemoryKind kind = MemoryKind::host;
  Device device = Device::cpu();

  static constexpr MemorySpace host() noexcept { return {MemoryKind::host, Device::cpu()}; }
  static constexpr MemorySpace pinned_host() noexcept {
    return {MemoryKind::pinned_host, Device::cpu()};
  }
  static constexpr MemorySpace of_device(Device device) noexcept {
    return {device.is_cpu() ? MemoryKind::host : MemoryKind::device, device};
  }

  friend constexpr bool operator==(const MemorySpace&, const MemorySpace&) = default;
};

using apo::to_string;

/// @brief "host", "pinned host", "cuda:1".
inline std::string to_string(const MemorySpace& space) {
  switch (space.kind) {
    case MemoryKind::host:
      return "host";
    case MemoryKind::pinned_host:
      return "pinned host";
    case MemoryKind::device:
      return space.device.str();
  }
  return "unknown";
}

/// @brief A source of raw memory: the one interface apo's upstreams, pools and adaptors share.
///
/// Contract.
/// - `allocate(bytes, alignment)` returns a pointer to at least `bytes` bytes whose address is a
///   multiple of `alignment`, valid until it is passed to `deallocate`. `alignment` must be a
///   power of two no larger than kMaxAlignment and `bytes` must not be negative: otherwise it
///   throws apo::Error(InvalidArgument). A request of 0 bytes returns nullptr and takes nothing.
/// - Failure: when the memory cannot be had (the upstream is out, a budget or an arena is full,
///   the request exceeds kMaxAllocationBytes) `allocate` throws apo::Error(OutOfMemory) with a
///   message naming the request and the state that refused it. A failed call leaves the
///   resource as it was (strong guarantee): nothing is allocated, no statistic moves. A resource
///   that cannot exist on this machine (pinned memory without CUDA) throws
///   apo::Error(Unsupported) from its constructor.
/// - `deallocate(ptr, bytes, alignment)` never throws. `ptr` must come from `allocate` on the
///   same resource with the same `bytes` and `alignment` and not have been deallocated since;
///   anything else is undefined behaviour (pools that track blocks abort with a message when
///   they notice). `deallocate(nullptr, 0, alignment)` does nothing.
/// - Thread safety: every member may be called concurrently from any number of threads, and
///   memory may be deallocated on a thread other than the one that allocated it.
/// - Lifetime: a resource must outlive the memory it handed out. AnyResource shares ownership,
///   which is how pooled tensors keep their pool alive.
/// - `space()` names where the memory lives; it never changes over the resource's life. Device
///   memory is valid on `space().device`; a stream-ordered resource documents its stream.
template <class R>
concept MemoryResource = requires(R& resource, const R& const_resource, void* ptr,
                                  std::int64_t bytes, std::int64_t alignment) {
  { resource.allocate(bytes, alignment) } -> std::same_as<void*>;
  { resource.deallocate(ptr, bytes, alignment) }
  noexcept->std::same_as<void>;
  { const_resource.space() }
  noexcept->std::same_as<MemorySpace>;
};

/// @brief Whether `value` is a power of two (and so positive).
constexpr bool is_power_of_two(std::int64_t value) noexcept {
  return value > 0 && std::has_single_bit(static_cast<std::uint64_t>(value));
}

/// @brief `value` rounded up to a multiple of `alignment` (a power of two). The caller keeps
/// `value` at most kMaxAllocationBytes, so the sum cannot overflow.
constexpr std::int64_t align_up(std::int64_t value, std::int64_t alignment) noexcept {
  return (value + alignment - 1) & ~(alignment - 1);
}

/// @brief Checks a request against the contract: throws InvalidArgument for a bad alignment or a
/// negative size and OutOfMemory above kMaxAllocationBytes, naming `resource` in the message.
inline void check_request(std::int64_t bytes, std::int64_t alignment, std::string_view resource) {
  if (!is_power_of_two(alignment) || alignment > kMaxAlignment) {
    fail(ErrorCode::InvalidArgument,
         "{}: alignment {} is not a power of two between 1 and {} bytes", resource, alignment,
         kMaxAlignment);
  }
  if (bytes < 0) fail(ErrorCode::InvalidArgument, "{}: cannot allocate {} bytes", resource, bytes);
  if (bytes > kMaxAllocationBytes) {
    fail(ErrorCode::OutOfMemory, "{}: {} requested, more than the {} any resource can hold",
         resource, format_bytes(bytes), format_bytes(kMaxAllocationBytes));
  }
}

/// @brief An owned, type-erased MemoryResource with shared ownership: copies refer to the same
/// resource, which lives until the last copy (or pooled tensor) lets go. Pools and adaptors take
/// their upstream as an AnyResource, so any resource composes with any other at run time.
class AnyResource {
 public:
  /// @brief Shares ownership of an existing resource.
  template <MemoryResource R>
  requires(!std::same_as<R, AnyResource>)
      AnyResource(std::shared_ptr<R> resource)  // NOLINT(google-explicit-constructor)
      : vtable_(&kVTable<R>), object_(resource.get()), owner_(std::move(resource)) {
    if (object_ == nullptr) fail(ErrorCode::InvalidArgument, "AnyResource: null resource");
  }

  /// @brief Moves a movable resource (HostResource, BudgetAdaptor, ...) into shared ownership.
  /// Resources that cannot move (pools) go in through std::make_shared.
  template <MemoryResource R>
  requires(!std::same_as<std::remove_cvref_t<R>, AnyResource> && !std::is_lvalue_reference_v<R>)
      AnyResource(R&& resource)  // NOLINT(google-explicit-constructor)
      : AnyResource(std::make_shared<R>(std::move(resource))) {
    // Checked here, not in the constraint: adaptors convert from AnyResource, so asking
    // whether R is movable while choosing this constructor would ask about itself.
    static_assert(std::is_move_constructible_v<R>, "construct this resource with std::make_shared");
  }

  /// @brief See MemoryResource.
  void* allocate(std::int64_t bytes, std::int64_t alignment = kDefaultAlignment) {
    return vtable_->allocate(object_, bytes, alignment);
  }
  /// @brief See MemoryResource.
  void deallocate(void* ptr, std::int64_t bytes,
                  std::int64_t alignment = kDefaultAlignment) noexcept {
    vtable_->deallocate(object_, ptr, bytes, alignment);
  }
  /// @brief See MemoryResource.
  MemorySpace space() const noexcept { return vtable_->space(object_); }

  /// @brief The resource as its concrete type, or nullptr when it is another type.
  template <MemoryResource R>
  R* target() const noexcept {
    return vtable_ == &kVTable<R> ? static_cast<R*>(object_) : nullptr;
  }

  /// @brief The same resource object (not merely an equal one).
  friend bool operator==(const AnyResource& a, const AnyResource& b) noexcept {
    return a.object_ == b.object_;
  }

 private:
  struct VTable {
    void* (*allocate)(void* object, std::int64_t bytes, std::int64_t alignment);
    void (*deallocate)(void* object, void* ptr, std::int64_t bytes,
                       std::int64_t alignment) noexcept;
    MemorySpace (*space)(const void* object) noexcept;
  };

  template <class R>
  static constexpr VTable kVTable{
      [](void* object, std::int64_t bytes, std::int64_t alignment) -> void* {
        return static_cast<R*>(object)->allocate(bytes, alignment);
      },
      [](void* object, void* ptr, std::int64_t bytes, std::int64_t alignment) noexcept {
        static_cast<R*>(object)->deallocate(ptr, bytes, alignment);
      },
      [](const void* object) noexcept { return static_cast<const R*>(object)->space(); }};

  const VTable* vtable_;
  void* object_;
  std::shared_ptr<void> owner_;
};

static_assert(MemoryResource<AnyResource>);

}  // namespace apo::memory
