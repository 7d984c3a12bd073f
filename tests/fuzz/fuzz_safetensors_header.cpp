// libFuzzer target: the safetensors header parser must reject any input cleanly (an apo::Error)
// or accept it with offsets that stay inside the input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "apo/core/error.hpp"
#include "apo/models/safetensors_format.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto bytes = std::as_bytes(std::span(data, size));
  try {
    const auto header = apo::models::parse_safetensors_header(
        bytes, static_cast<std::int64_t>(size), "fuzz.safetensors");
    for (const auto& tensor : header.tensors) {
      if (header.data_offset() + tensor.data_end > static_cast<std::int64_t>(size)) std::abort();
    }
  } catch (const apo::Error&) {
  }
  return 0;
}
