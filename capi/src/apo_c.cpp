// The C ABI over the C++ library: every entry point catches everything, so no exception crosses
// the boundary; handles are checked against a registry so a stale one is an error, not a crash.

#include "apo/apo.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_set>

#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"
#include "apo/tune/presets.hpp"
#include "apo/version.hpp"

struct apo_config {
  apo::Config config;
};

namespace {

static_assert(APO_STATUS_INVALID_ARGUMENT == static_cast<int>(apo::ErrorCode::InvalidArgument));
static_assert(APO_STATUS_INVALID_CONFIG == static_cast<int>(apo::ErrorCode::InvalidConfig));
static_assert(APO_STATUS_NOT_FOUND == static_cast<int>(apo::ErrorCode::NotFound));
static_assert(APO_STATUS_IO == static_cast<int>(apo::ErrorCode::Io));
static_assert(APO_STATUS_CORRUPT == static_cast<int>(apo::ErrorCode::Corrupt));
static_assert(APO_STATUS_UNSUPPORTED == static_cast<int>(apo::ErrorCode::Unsupported));
static_assert(APO_STATUS_OUT_OF_MEMORY == static_cast<int>(apo::ErrorCode::OutOfMemory));
static_assert(APO_STATUS_CANCELLED == static_cast<int>(apo::ErrorCode::Cancelled));
static_assert(APO_STATUS_TIMED_OUT == static_cast<int>(apo::ErrorCode::TimedOut));
static_assert(APO_STATUS_REJECTED == static_cast<int>(apo::ErrorCode::Rejected));
static_assert(APO_STATUS_INTERNAL == static_cast<int>(apo::ErrorCode::Internal));

// The first published layout of apo_config_options; callers may pass a larger (newer) struct.
constexpr std::size_t kConfigOptionsV1Size = sizeof(apo_config_options);

thread_local std::string last_error;

// Live handles of one type. Handles are heap pointers; a pointer not in the set was never handed
// out or has been freed.
template <class Handle>
class HandleRegistry {
 public:
  Handle* add(Handle* handle) {
    std::lock_guard lock(mutex_);
    live_.insert(handle);
    return handle;
  }
  bool contains(const Handle* handle) const {
    std::lock_guard lock(mutex_);
    return live_.count(const_cast<Handle*>(handle)) != 0;
  }
  bool remove(Handle* handle) {
    std::lock_guard lock(mutex_);
    return live_.erase(handle) != 0;
  }

 private:
  mutable std::mutex mutex_;
  std::unordered_set<Handle*> live_;
};

HandleRegistry<apo_config>& configs() {
  static HandleRegistry<apo_config> registry;
  return registry;
}

apo_status set_error(apo_status status, std::string message) {
  try {
    last_error = std::move(message);
  } catch (...) {
    last_error.clear();
  }
  return status;
}

// Runs `body`, turning every exception into a status and a message.
template <class Body>
apo_status guarded(Body&& body) noexcept {
  try {
    body();
    return APO_STATUS_OK;
  } catch (const apo::Error& error) {
    return set_error(static_cast<apo_status>(error.code()), error.what());
  } catch (const std::bad_alloc&) {
    return set_error(APO_STATUS_OUT_OF_MEMORY, "out of host memory");
  } catch (const std::exception& error) {
    return set_error(APO_STATUS_INTERNAL, error.what());
  } catch (...) {
    return set_error(APO_STATUS_INTERNAL, "unknown exception");
  }
}

void require(bool condition, const char* message) {
  if (!condition) throw apo::Error(apo::ErrorCode::InvalidArgument, message);
}

char* copy_string(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out == nullptr) throw std::bad_alloc();
  std::memcpy(out, text.c_str(), text.size() + 1);
  return out;
}

// Loads a configuration from the source that `add_source` adds, then the options' layers.
template <class AddSource>
apo_status load_config(AddSource&& add_source, const apo_config_options* options,
                       apo_config** out_config) {
  return guarded([&] {
    require(out_config != nullptr, "out_config is NULL");
    apo::ConfigLoader loader = apo::tune::config_loader();
    add_source(loader);
    apo::MachineInfo machine;
    if (options != nullptr) {
      require(options->struct_size >= kConfigOptionsV1Size,
              "options->struct_size is smaller than apo_config_options (call "
              "apo_config_options_init)");
      require(options->preset_count == 0 || options->presets != nullptr,
              "options->presets is NULL but preset_count is not 0");
      require(options->override_count == 0 || options->overrides != nullptr,
              "options->overrides is NULL but override_count is not 0");
      for (std::size_t i = 0; i < options->preset_count; ++i) {
        require(options->presets[i] != nullptr, "options->presets has a NULL entry");
        loader.preset(options->presets[i]);
      }
      for (std::size_t i = 0; i < options->override_count; ++i) {
        require(options->overrides[i] != nullptr, "options->overrides has a NULL entry");
        loader.set(options->overrides[i]);
      }
      if (options->check_machine != 0) {
        machine = apo::probe_machine();
        loader.check_against(machine);
      }
    }
    auto handle = std::make_unique<apo_config>(apo_config{loader.load().config});
    *out_config = configs().add(handle.release());
  });
}

}  // namespace

extern "C" {

const char* apo_version(void) {
  return APO_VERSION_STRING;
}

const char* apo_status_name(apo_status status) {
  switch (status) {
    case APO_STATUS_OK:
      return "OK";
    case APO_STATUS_INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case APO_STATUS_INVALID_CONFIG:
      return "INVALID_CONFIG";
    case APO_STATUS_NOT_FOUND:
      return "NOT_FOUND";
    case APO_STATUS_IO:
      return "IO";
    case APO_STATUS_CORRUPT:
      return "CORRUPT";
    case APO_STATUS_UNSUPPORTED:
      return "UNSUPPORTED";
    case APO_STATUS_OUT_OF_MEMORY:
      return "OUT_OF_MEMORY";
    case APO_STATUS_CANCELLED:
      return "CANCELLED";
    case APO_STATUS_TIMED_OUT:
      return "TIMED_OUT";
    case APO_STATUS_REJECTED:
      return "REJECTED";
    case APO_STATUS_INTERNAL:
      return "INTERNAL";
  }
  return "UNKNOWN";
}

const char* apo_last_error(void) {
  return last_error.c_str();
}

void apo_string_free(char* text) {
  std::free(text);
}

void apo_config_options_init(apo_config_options* options) {
  if (options == nullptr) return;
  *options = apo_config_options{};
  options->struct_size = sizeof(apo_config_options);
}

apo_status apo_config_load_file(const char* path, const apo_config_options* options,
                                apo_config** out_config) {
  if (path == nullptr) return set_error(APO_STATUS_INVALID_ARGUMENT, "path is NULL");
  return load_config([&](apo::ConfigLoader& loader) { loader.file(path); }, options, out_config);
}

apo_status apo_config_load_string(const char* json, const char* source_name,
                                  const apo_config_options* options, apo_config** out_config) {
  if (json == nullptr) return set_error(APO_STATUS_INVALID_ARGUMENT, "json is NULL");
  return load_config(
      [&](apo::ConfigLoader& loader) { loader.text(json, source_name ? source_name : "<string>"); },
      options, out_config);
}

apo_status apo_config_to_json(const apo_config* config, char** out_json) {
  return guarded([&] {
    require(config != nullptr, "config is NULL");
    require(configs().contains(config), "config is not a live apo_config (freed, or never one)");
    require(out_json != nullptr, "out_json is NULL");
    *out_json = copy_string(apo::to_json(config->config));
  });
}

void apo_config_free(apo_config* config) {
  if (config != nullptr && configs().remove(config)) delete config;
}

apo_status apo_probe_json(char** out_json) {
  return guarded([&] {
    require(out_json != nullptr, "out_json is NULL");
    *out_json = copy_string(apo::to_json(apo::probe_machine()));
  });
}

}  // extern "C"
