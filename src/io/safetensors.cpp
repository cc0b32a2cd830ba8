#include "io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "core/error.h"

namespace amalgam {

using json = nlohmann::json;

namespace {

uint64_t read_le64(std::span<const std::byte> b) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(b[static_cast<size_t>(i)]);
  return v;
}

// Finds the first key that appears twice in one object, in one SAX pass. (nlohmann's parse
// callback could do it while building the DOM, but its callback parser scans the whole
// enclosing object each time an inner object ends: quadratic in the tensor count, 21 s for
// a header of 50,000 tensors. Two linear passes take 0.2 s.)
class DuplicateKeyFinder : public nlohmann::json_sax<json> {
 public:
  std::string duplicate;

  bool start_object(std::size_t) override {
    open_objects_.emplace_back();
    return true;
  }
  bool end_object() override {
    open_objects_.pop_back();
    return true;
  }
  bool key(string_t& k) override {
    if (!open_objects_.back().insert(k).second && duplicate.empty()) duplicate = k;
    return true;
  }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }

 private:
  std::vector<std::unordered_set<std::string>> open_objects_;
};

// Parses JSON, rejecting duplicate keys in any object (nlohmann would keep the last).
json parse_json_strict(std::string_view text, const std::filesystem::path& path, const char* what) {
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    throw InputError(path, std::string(what) + " is not valid JSON: " + e.what());
  }
  DuplicateKeyFinder finder;
  json::sax_parse(text.begin(), text.end(), &finder);
  if (!finder.duplicate.empty()) throw InputError(path, finder.duplicate, std::string("duplicate key in ") + what);
  return j;
}

uint64_t as_u64(const json& v, const std::filesystem::path& path, const std::string& name, const char* field) {
  if (!v.is_number_unsigned())
    throw InputError(path, name, std::string(field) + " must hold non-negative integers, got " + v.dump());
  return v.get<uint64_t>();
}

bool has_control_character(std::string_view name) {
  return std::any_of(name.begin(), name.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

// A shape with a zero dimension holds no bytes whatever its other dimensions, but code that
// views a tensor as rows x columns multiplies or divides those: every dimension counted as
// at least 1 must still give a byte size that fits in 64 bits.
void check_extent(const Shape& shape, DType dtype, const std::filesystem::path& path, const std::string& name) {
  uint64_t extent = dtype_size(dtype);
  for (const int64_t d : shape)
    if (__builtin_mul_overflow(extent, static_cast<uint64_t>(std::max<int64_t>(d, 1)), &extent) ||
        extent > static_cast<uint64_t>(INT64_MAX))
      throw InputError(path, name,
                       "shape " + shape_to_string(shape) + ": its nonzero dimensions' byte size overflows 64 bits");
}

}  // namespace

SafetensorsReader::SafetensorsReader(const std::filesystem::path& path) : file_(std::make_shared<MappedFile>(path)) {
  const auto bytes = file_->bytes();
  if (bytes.size() < 8)
    throw InputError(path,
                     "file is " + std::to_string(bytes.size()) + " bytes, too short for the 8-byte header length");
  header_bytes_ = read_le64(bytes.first(8));
  if (header_bytes_ > kMaxHeaderBytes)
    throw InputError(path, "header length " + std::to_string(header_bytes_) +
                               " exceeds the 100 MB limit (corrupt or not a safetensors file)");
  if (header_bytes_ > bytes.size() - 8)
    throw InputError(path, "header length " + std::to_string(header_bytes_) + " runs past the end of the file (" +
                               std::to_string(bytes.size()) + " bytes): truncated or not a safetensors file");
  const auto* header_begin = reinterpret_cast<const char*>(bytes.data() + 8);
  parse_header(std::string_view(header_begin, header_bytes_));
  validate_layout(bytes.size() - 8 - header_bytes_);
}

void SafetensorsReader::parse_header(std::string_view text) {
  const auto& path = file_->path();
  const json header = parse_json_strict(text, path, "header");
  if (!header.is_object()) throw InputError(path, "header is not a JSON object");
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw InputError(path, "__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) throw InputError(path, "__metadata__ value for '" + key + "' is not a string");
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) throw InputError(path, name, "entry is not an object");
    if (has_control_character(name))
      throw InputError(path, name, "name contains a control character (corrupt or hostile file)");
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!entry.contains(field)) throw InputError(path, name, std::string("missing '") + field + "'");
    const auto& dtype_json = entry["dtype"];
    if (!dtype_json.is_string()) throw InputError(path, name, "dtype is not a string");
    const auto dtype = parse_dtype(dtype_json.get<std::string>());
    if (!dtype) throw InputError(path, name, "unknown dtype '" + dtype_json.get<std::string>() + "'");

    TensorInfo info;
    info.name = name;
    info.dtype = *dtype;
    const auto& shape_json = entry["shape"];
    if (!shape_json.is_array()) throw InputError(path, name, "shape is not an array");
    uint64_t numel = 1;
    for (const auto& d : shape_json) {
      const uint64_t dim = as_u64(d, path, name, "shape");
      if (dim > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, dim, &numel))
        throw InputError(path, name, "shape " + shape_json.dump() + " has more elements than fit in 64 bits");
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    check_extent(info.shape, info.dtype, path, name);
    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2) throw InputError(path, name, "data_offsets must be [begin, end]");
    info.begin = as_u64(offsets[0], path, name, "data_offsets");
    info.end = as_u64(offsets[1], path, name, "data_offsets");
    if (info.end < info.begin)
      throw InputError(
          path, name,
          "data_offsets end " + std::to_string(info.end) + " is before begin " + std::to_string(info.begin));
    uint64_t expected = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(info.dtype)), &expected) ||
        expected > static_cast<uint64_t>(INT64_MAX))
      throw InputError(path, name, "byte size of shape " + shape_json.dump() + " overflows 64 bits");
    if (info.nbytes() != expected)
      throw InputError(path, name,
                       "holds " + std::to_string(info.nbytes()) + " bytes but " + std::string(dtype_name(info.dtype)) +
                           " " + shape_json.dump() + " needs " + std::to_string(expected));
    tensors_.push_back(std::move(info));
  }
}

void SafetensorsReader::validate_layout(uint64_t data_bytes) {
  const auto& path = file_->path();
  for (const auto& t : tensors_)
    if (t.end > data_bytes)
      throw InputError(path, t.name,
                       "data_offsets end " + std::to_string(t.end) + " is past the end of the data (" +
                           std::to_string(data_bytes) + " bytes): truncated file?");
  std::stable_sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  std::string previous = "the start of the data";
  for (const auto& t : tensors_) {
    if (t.begin < cursor) throw InputError(path, t.name, "data overlaps " + previous);
    if (t.begin > cursor)
      throw InputError(path, t.name, "hole of " + std::to_string(t.begin - cursor) + " bytes after " + previous);
    cursor = t.end;
    previous = "tensor '" + t.name + "'";
  }
  if (cursor != data_bytes)
    throw InputError(path, std::to_string(data_bytes - cursor) + " bytes of data after the last tensor");
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
}

const TensorInfo* SafetensorsReader::find(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Tensor SafetensorsReader::tensor(std::string_view name) const {
  const TensorInfo* info = find(name);
  if (!info) throw InputError(path(), name, "no such tensor");
  const auto data = file_->bytes().subspan(file_offset(*info), info->nbytes());
  return Tensor::view(info->dtype, info->shape, data, file_, file_.get(), file_offset(*info));
}

void SafetensorsReader::release(std::string_view name) const {
  if (const TensorInfo* info = find(name)) file_->release(file_->bytes().subspan(file_offset(*info), info->nbytes()));
}

void SafetensorsReader::prefetch(std::string_view name) const {
  if (const TensorInfo* info = find(name)) file_->will_need(file_offset(*info), info->nbytes());
}

uint64_t TensorSpec::nbytes() const {
  return static_cast<uint64_t>(shape_numel(shape)) * dtype_size(dtype);
}

std::string safetensors_header(const std::vector<TensorInfo>& layout, const Metadata& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& m = header["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
  }
  for (const auto& t : layout) {
    auto& entry = header[t.name];
    entry["dtype"] = std::string(dtype_name(t.dtype));
    entry["shape"] = t.shape;
    entry["data_offsets"] = {t.begin, t.end};
  }
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  return text;
}

namespace {
void pwrite_all(int fd, const std::filesystem::path& path, const void* data, size_t n, uint64_t offset) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, std::min<size_t>(n, size_t{1} << 30), static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw_system_error(path, "write failed");
    }
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
}
}  // namespace

SafetensorsWriter::SafetensorsWriter(const std::filesystem::path& path, const std::vector<TensorSpec>& plan,
                                     const Metadata& metadata, WriteOrder order)
    : path_(path) {
  uint64_t offset = 0;
  for (const auto& spec : plan) {
    if (!index_.emplace(spec.name, layout_.size()).second)
      throw std::logic_error("SafetensorsWriter: tensor '" + spec.name + "' planned twice");
    const uint64_t n = spec.nbytes();
    layout_.push_back({spec.name, spec.dtype, spec.shape, offset, offset + n});
    offset += n;
  }
  data_bytes_ = offset;
  written_.assign(layout_.size(), false);

  const std::string header = safetensors_header(layout_, metadata);
  data_start_ = 8 + header.size();
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(header.size() >> (8 * i));
  if (order == WriteOrder::Plan) {
    // The header waits for the first tensor: a checkpoint's shard writers are all made up
    // front, and a stream takes its blocks when it first appends.
    stream_ = std::make_unique<SequentialFile>(path);
    stream_header_.assign(reinterpret_cast<const char*>(length), 8);
    stream_header_ += header;
    return;
  }
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw_system_error(path, "cannot create");
  // No fallocate: writing into preallocated (unwritten) extents measured 7x slower on ext4
  // than plain writes; a full disk surfaces as a failed write instead.
  pwrite_all(fd_, path_, length, 8, 0);
  pwrite_all(fd_, path_, header.data(), header.size(), 8);
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void SafetensorsWriter::write(std::string_view name, const Tensor& tensor) {
  const auto it = index_.find(std::string(name));
  if (it == index_.end()) throw std::logic_error("SafetensorsWriter: tensor '" + std::string(name) + "' not planned");
  const TensorInfo& slot = layout_[it->second];
  if (tensor.dtype() != slot.dtype || tensor.shape() != slot.shape)
    throw std::logic_error("SafetensorsWriter: tensor '" + slot.name + "' does not match its plan");
  {
    std::lock_guard lock(mutex_);
    if (written_[it->second]) throw std::logic_error("SafetensorsWriter: tensor '" + slot.name + "' written twice");
    if (stream_ && next_filled_ != 0)
      throw std::logic_error("SafetensorsWriter: tensor '" + slot.name + "' written while another is partly appended");
    if (!stream_) written_[it->second] = true;
  }
  if (stream_) {
    append(name, tensor.bytes());
    return;
  }
  pwrite_all(fd_, path_, tensor.bytes().data(), tensor.nbytes(), data_start_ + slot.begin);
  // Start writing this range to disk now, so that the fsync in finish() finds most of the
  // file already written instead of flushing all of it while the user waits.
  ::sync_file_range(fd_, static_cast<off_t>(data_start_ + slot.begin), static_cast<off_t>(tensor.nbytes()),
                    SYNC_FILE_RANGE_WRITE);
}

void SafetensorsWriter::append(std::string_view name, std::span<const std::byte> bytes) {
  do {  // an empty tensor takes one empty commit
    const std::span<std::byte> space = reserve(name, bytes.size());
    if (!space.empty()) std::memcpy(space.data(), bytes.data(), space.size());
    commit(name, space.size());
    bytes = bytes.subspan(space.size());
  } while (!bytes.empty());
}

// The tensor being appended: `name` must be it, with at least `bytes` of it still to come.
const TensorInfo& SafetensorsWriter::stream_slot(std::string_view name, uint64_t bytes) const {
  if (!stream_) throw std::logic_error("SafetensorsWriter: appending needs WriteOrder::Plan");
  if (next_ >= layout_.size() || layout_[next_].name != name)
    throw std::logic_error("SafetensorsWriter: tensor '" + std::string(name) + "' out of plan order");
  const TensorInfo& slot = layout_[next_];
  if (bytes > slot.end - slot.begin - next_filled_)
    throw std::logic_error("SafetensorsWriter: more bytes than planned for tensor '" + slot.name + "'");
  return slot;
}

std::span<std::byte> SafetensorsWriter::reserve(std::string_view name, size_t max) {
  std::lock_guard lock(mutex_);
  const TensorInfo& slot = stream_slot(name, 0);
  if (next_ == 0 && next_filled_ == 0 && !header_streamed_) {
    stream_->append(std::as_bytes(std::span(stream_header_)));
    header_streamed_ = true;
  }
  const uint64_t left = slot.end - slot.begin - next_filled_;
  if (left == 0) return {};
  return stream_->reserve(static_cast<size_t>(std::min<uint64_t>(max, left)));
}

void SafetensorsWriter::commit(std::string_view name, size_t n) {
  std::lock_guard lock(mutex_);
  const TensorInfo& slot = stream_slot(name, n);
  if (n > 0) stream_->commit(n);
  next_filled_ += n;
  if (next_filled_ < slot.end - slot.begin) return;
  written_[next_++] = true;
  next_filled_ = 0;
  // The shard is complete: flush and sync it now, while the merge goes on.
  if (next_ == layout_.size()) stream_->finish();
}

void SafetensorsWriter::finish() {
  for (size_t i = 0; i < layout_.size(); ++i)
    if (!written_[i]) throw std::logic_error("SafetensorsWriter: tensor '" + layout_[i].name + "' never written");
  if (stream_) {
    if (layout_.empty()) {  // nothing planned: the header alone
      stream_->append(std::as_bytes(std::span(stream_header_)));
      header_streamed_ = true;
      stream_->finish();
    }
    return;
  }
  if (::fsync(fd_) != 0) throw_system_error(path_, "fsync failed");
  if (::close(fd_) != 0) {
    fd_ = -1;
    throw_system_error(path_, "close failed");
  }
  fd_ = -1;
}

void save_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const Metadata& metadata) {
  std::vector<TensorSpec> plan;
  for (const auto& [name, t] : tensors) plan.push_back({name, t.dtype(), t.shape()});
  SafetensorsWriter writer(path, plan, metadata);
  for (const auto& [name, t] : tensors) writer.write(name, t);
  writer.finish();
}

}  // namespace amalgam

namespace amalgam {

bool safetensors_written_by_amalgam(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return false;
  std::string header;
  unsigned char length[8];
  if (::pread(fd, length, 8, 0) == 8) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | length[i];
    if (n <= kMaxHeaderBytes) {
      header.resize(n);
      if (::pread(fd, header.data(), n, 8) != static_cast<ssize_t>(n)) header.clear();
    }
  }
  ::close(fd);
  const json parsed = json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (!parsed.is_object() || !parsed.contains("__metadata__") || !parsed["__metadata__"].is_object()) return false;
  const json& meta = parsed["__metadata__"];
  const auto is = [&](const char* key, auto&& test) {
    return meta.contains(key) && meta[key].is_string() && test(meta[key].get<std::string>());
  };
  // Statistics files have always said so in their format; other files name amalgam.
  return is("written_by", [](const std::string& v) { return v.starts_with("amalgam"); }) ||
         is("format", [](const std::string& v) { return v == "amalgam-stats"; });
}

}  // namespace amalgam
