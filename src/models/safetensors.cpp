// Reading safetensors files as mapped views or copies, and writing them.

#include "apo/models/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <set>
#include <unordered_map>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <fmt/format.h>

#include "apo/core/error.hpp"
#include "apo/core/machine.hpp"
#include "file_bytes.hpp"

namespace apo::models {

struct SafetensorsFile::State {
  std::string path;
  std::shared_ptr<const FileBytes> bytes;
  SafetensorsHeader header;
  std::unordered_map<std::string, std::size_t> index;
  std::int64_t stored_bytes = 0;
  std::optional<Codec> codec;
};

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  auto state = std::make_shared<State>();
  state->path = path.string();
  state->bytes = FileBytes::map(path);
  state->stored_bytes = static_cast<std::int64_t>(state->bytes->size());
  state->codec = detect_codec(state->bytes->bytes());
  if (state->codec) {
    const std::int64_t limit = read_host_memory().available_bytes;
    state->bytes =
        FileBytes::hold(decompress(state->bytes->bytes(), *state->codec, limit, state->path));
  }
  state->header = parse_safetensors_header(
      state->bytes->bytes(), static_cast<std::int64_t>(state->bytes->size()), state->path);
  for (std::size_t i = 0; i < state->header.tensors.size(); ++i) {
    state->index.emplace(state->header.tensors[i].name, i);
  }
  return SafetensorsFile(std::move(state));
}

const std::string& SafetensorsFile::path() const noexcept {
  return state_->path;
}
const SafetensorsHeader& SafetensorsFile::header() const noexcept {
  return state_->header;
}
std::int64_t SafetensorsFile::stored_bytes() const noexcept {
  return state_->stored_bytes;
}
std::optional<Codec> SafetensorsFile::codec() const noexcept {
  return state_->codec;
}

const TensorEntry* SafetensorsFile::find(std::string_view name) const {
  const auto it = state_->index.find(std::string(name));
  return it == state_->index.end() ? nullptr : &state_->header.tensors[it->second];
}

const TensorEntry& SafetensorsFile::entry(std::string_view name) const {
  const TensorEntry* found = find(name);
  if (found == nullptr) {
    throw Error(ErrorCode::NotFound, fmt::format("no tensor named '{}'", name), state_->path);
  }
  return *found;
}

at::Tensor SafetensorsFile::view(std::string_view name) const {
  const TensorEntry& e = entry(name);
  std::byte* data =
      const_cast<std::byte*>(state_->bytes->data()) + state_->header.data_offset() + e.data_begin;
  if (reinterpret_cast<std::uintptr_t>(data) % element_size(e.dtype) != 0) return copy(name);
  // The deleter owns a reference to the bytes, so the mapping outlives every view.
  return at::from_blob(
      data, e.shape, [keep = state_->bytes](void*) {},
      at::TensorOptions().dtype(scalar_type_of(e.dtype)));
}

at::Tensor SafetensorsFile::copy(std::string_view name) const {
  const TensorEntry& e = entry(name);
  at::Tensor out = at::empty(e.shape, at::TensorOptions().dtype(scalar_type_of(e.dtype)));
  if (e.bytes() > 0) {  // an empty tensor has no data pointer to copy to
    const std::byte* from = state_->bytes->data() + state_->header.data_offset() + e.data_begin;
    auto* to = static_cast<std::byte*>(out.data_ptr());
    // On ATen's threads, in pieces of at least 1 MiB, as at::Tensor::copy_ copies: one thread
    // does not reach the memory's bandwidth (nor the page cache's, for a mapped file).
    at::parallel_for(0, e.bytes(), std::int64_t{1} << 20,
                     [&](std::int64_t begin, std::int64_t end) {
                       std::memcpy(to + begin, from + begin, static_cast<std::size_t>(end - begin));
                     });
  }
  return out;
}

void SafetensorsFile::prefetch(std::int64_t data_begin, std::int64_t bytes) const noexcept {
  if (bytes <= 0 || data_begin < 0) return;
  state_->bytes->will_need(static_cast<std::size_t>(state_->header.data_offset() + data_begin),
                           static_cast<std::size_t>(bytes));
}

namespace {

struct DTypePair {
  DType dtype;
  at::ScalarType scalar_type;
};

constexpr DTypePair kScalarTypes[] = {
    {DType::BOOL, at::kBool},
    {DType::U8, at::kByte},
    {DType::I8, at::kChar},
    {DType::I16, at::kShort},
    {DType::U16, at::kUInt16},
    {DType::I32, at::kInt},
    {DType::U32, at::kUInt32},
    {DType::I64, at::kLong},
    {DType::U64, at::kUInt64},
    {DType::F16, at::kHalf},
    {DType::BF16, at::kBFloat16},
    {DType::F32, at::kFloat},
    {DType::F64, at::kDouble},
    {DType::F8_E4M3, at::kFloat8_e4m3fn},
    {DType::F8_E5M2, at::kFloat8_e5m2},
};

}  // namespace

DType dtype_of(at::ScalarType scalar_type) {
  for (const auto& pair : kScalarTypes) {
    if (pair.scalar_type == scalar_type) return pair.dtype;
  }
  fail(ErrorCode::Unsupported, "safetensors has no dtype for torch {}", c10::toString(scalar_type));
}

at::ScalarType scalar_type_of(DType dtype) {
  for (const auto& pair : kScalarTypes) {
    if (pair.dtype == dtype) return pair.scalar_type;
  }
  fail(ErrorCode::Internal, "no torch dtype for {}", to_string(dtype));
}

void save_safetensors(const std::filesystem::path& path, std::span<const NamedTensor> tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::set<std::string_view> names;
  for (const NamedTensor& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      fail(ErrorCode::InvalidArgument, "cannot save a tensor named '{}'", t.name);
    }
    if (!names.insert(t.name).second) {
      fail(ErrorCode::InvalidArgument, "two tensors are named '{}'", t.name);
    }
    if (!t.tensor.defined()) fail(ErrorCode::InvalidArgument, "tensor '{}' is undefined", t.name);
  }
  // Largest elements first, then by name: every tensor starts aligned to its element size.
  std::vector<const NamedTensor*> order;
  for (const NamedTensor& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const NamedTensor* a, const NamedTensor* b) {
    const auto size_a = a->tensor.element_size();
    const auto size_b = b->tensor.element_size();
    return size_a != size_b ? size_a > size_b : a->name < b->name;
  });
  std::vector<TensorEntry> entries;
  std::int64_t offset = 0;
  for (const NamedTensor* t : order) {
    TensorEntry entry;
    entry.name = t->name;
    entry.dtype = dtype_of(t->tensor.scalar_type());
    entry.shape.assign(t->tensor.sizes().begin(), t->tensor.sizes().end());
    entry.data_begin = offset;
    offset += t->tensor.numel() * static_cast<std::int64_t>(t->tensor.element_size());
    entry.data_end = offset;
    entries.push_back(std::move(entry));
  }
  const std::string header = serialize_safetensors_header(entries, metadata);
  const std::uint64_t header_length = header.size();

  TemporaryFile file(path);
  file.write(std::as_bytes(std::span(&header_length, 1)));
  file.write(std::as_bytes(std::span(header.data(), header.size())));
  for (const NamedTensor* t : order) {
    // One tensor at a time on the host, so a GPU model is not copied whole.
    const at::Tensor host = t->tensor.to(at::kCPU).contiguous();
    file.write(std::span(static_cast<const std::byte*>(host.data_ptr()),
                         static_cast<std::size_t>(host.nbytes())));
  }
  file.commit();
}

}  // namespace apo::models
