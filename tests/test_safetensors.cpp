// The safetensors reader and writer: golden bytes from the format specification, round
// trips through every dtype, and a catalogue of malformed files.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/error.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace amalgam {
namespace {

using testing::raw_safetensors;
using testing::read_bytes;
using testing::TempDir;
using testing::write_bytes;
namespace fs = std::filesystem;

// Written by hand from the specification: 8-byte little-endian header length (144 =
// 0x90), compact JSON padded with spaces to a multiple of 8, then the data: F32 1.0 and
// -2.0 little-endian, then U8 1 2 3.
const std::string kGoldenHeader =
    R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
    R"("b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}})"
    "      ";
const std::string kGoldenFile = std::string("\x90\0\0\0\0\0\0\0", 8) + kGoldenHeader +
                                std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0\x01\x02\x03", 11);

TEST(Safetensors, GoldenFileReads) {
  TempDir dir;
  write_bytes(dir / "golden.safetensors", kGoldenFile);
  SafetensorsReader r(dir / "golden.safetensors");
  ASSERT_EQ(r.tensors().size(), 2u);
  EXPECT_EQ(r.header_bytes(), 144u);
  EXPECT_EQ(r.metadata().at("format"), "pt");
  const Tensor a = r.tensor("a").to(DType::F32);
  EXPECT_EQ(a.shape(), Shape{2});
  EXPECT_EQ(a.data<float>()[0], 1.0f);
  EXPECT_EQ(a.data<float>()[1], -2.0f);
  const Tensor b = r.tensor("b");
  EXPECT_EQ(b.dtype(), DType::U8);
  EXPECT_EQ(b.data<uint8_t>()[2], 3);
}

TEST(Safetensors, GoldenFileWritesBackIdentically) {
  TempDir dir;
  write_bytes(dir / "golden.safetensors", kGoldenFile);
  SafetensorsReader r(dir / "golden.safetensors");
  save_safetensors(dir / "copy.safetensors", {{"a", r.tensor("a")}, {"b", r.tensor("b")}});
  EXPECT_EQ(read_bytes(dir / "copy.safetensors"), kGoldenFile);
}

TEST(Safetensors, HeaderIsPaddedWithSpacesToEightBytes) {
  for (size_t name_len = 1; name_len <= 9; ++name_len) {
    const std::string h = safetensors_header({{std::string(name_len, 'x'), DType::U8, {1}, 0, 1}}, {});
    EXPECT_EQ(h.size() % 8, 0u);
    const size_t json_end = h.find_last_of('}') + 1;
    EXPECT_LT(h.size() - json_end, 8u);
    EXPECT_EQ(h.find_first_not_of(' ', json_end), std::string::npos);
  }
}

Tensor random_tensor(DType dtype, Shape shape, std::mt19937& rng) {
  Tensor t = Tensor::zeros(dtype, std::move(shape));
  for (auto& b : t.mutable_bytes()) b = static_cast<std::byte>(rng() & 0xff);
  return t;
}

TEST(Safetensors, RoundTripsEveryDTypeByteExact) {
  TempDir dir;
  std::mt19937 rng(7);
  std::vector<std::pair<std::string, Tensor>> tensors;
  // Odd sizes first, so later tensors start at unaligned offsets.
  tensors.emplace_back("odd", random_tensor(DType::U8, {3}, rng));
  for (DType t : kAllDTypes)
    tensors.emplace_back(std::string("t_") + std::string(dtype_name(t)), random_tensor(t, {3, 5}, rng));
  tensors.emplace_back("scalar", random_tensor(DType::F32, {}, rng));
  tensors.emplace_back("empty", random_tensor(DType::F16, {0, 4}, rng));
  save_safetensors(dir / "all.safetensors", tensors, {{"format", "pt"}, {"note", "x"}});

  SafetensorsReader r(dir / "all.safetensors");
  ASSERT_EQ(r.tensors().size(), tensors.size());
  EXPECT_EQ(r.metadata().at("note"), "x");
  for (const auto& [name, t] : tensors) {
    const Tensor back = r.tensor(name);
    EXPECT_EQ(back.dtype(), t.dtype()) << name;
    EXPECT_EQ(back.shape(), t.shape()) << name;
    ASSERT_EQ(back.nbytes(), t.nbytes()) << name;
    EXPECT_EQ(std::memcmp(back.bytes().data(), t.bytes().data(), t.nbytes()), 0) << name;
  }
}

TEST(Safetensors, ReadsUnalignedData) {
  // Header of 61 bytes without padding: the F32 data starts at file offset 69.
  const std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  float values[2] = {3.5f, -0.25f};
  std::string data(reinterpret_cast<const char*>(values), 8);
  TempDir dir;
  write_bytes(dir / "u.safetensors", raw_safetensors(header, data));
  SafetensorsReader r(dir / "u.safetensors");
  const Tensor w = r.tensor("w");
  const Tensor f = w.to(DType::F32);
  EXPECT_EQ(f.data<float>()[0], 3.5f);
  EXPECT_EQ(f.data<float>()[1], -0.25f);
}

TEST(Safetensors, WriterRejectsMismatchedOrMissingTensors) {
  TempDir dir;
  SafetensorsWriter w(dir / "x.safetensors", {{"a", DType::F32, {2}}, {"b", DType::F32, {1}}});
  EXPECT_THROW(w.write("a", Tensor::zeros(DType::F16, {2})), std::logic_error);
  EXPECT_THROW(w.write("zzz", Tensor::zeros(DType::F32, {2})), std::logic_error);
  w.write("a", Tensor::zeros(DType::F32, {2}));
  EXPECT_THROW(w.write("a", Tensor::zeros(DType::F32, {2})), std::logic_error);
  EXPECT_THROW(w.finish(), std::logic_error);  // "b" never written
}

TEST(Safetensors, UnknownTensorIsAnInputError) {
  TempDir dir;
  write_bytes(dir / "g.safetensors", kGoldenFile);
  SafetensorsReader r(dir / "g.safetensors");
  try {
    (void)r.tensor("nope");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'nope'"), std::string::npos);
  }
}

struct Malformed {
  const char* name;
  std::string bytes;
  const char* expected;  // a substring of the one-line error
};

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, uint64_t b, uint64_t e) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(b) + "," + std::to_string(e) + "]}";
}
std::string file_of(const std::string& entries, const std::string& data) {
  return raw_safetensors("{" + entries + "}", data);
}

std::vector<Malformed> catalogue() {
  const std::string f8(8, '\x01');
  const std::string valid = file_of(entry("a", "F32", "[2]", 0, 8), f8);
  std::vector<Malformed> c = {
      {"empty file", "", "too short for the 8-byte header length"},
      {"five bytes", std::string("\x10\0\0\0\0", 5), "too short"},
      {"header length over 100 MB", testing::le64(200'000'000) + "{}", "exceeds the 100 MB limit"},
      {"header length beyond the file", testing::le64(500) + "{}", "runs past the end of the file"},
      {"truncated inside the header", valid.substr(0, 20), "runs past the end of the file"},
      {"truncated inside the data", valid.substr(0, valid.size() - 3), "past the end of the data"},
      {"header not JSON", raw_safetensors("{not json", ""), "not valid JSON"},
      {"header invalid UTF-8", raw_safetensors("{\"a\xff\":1}", ""), "not valid JSON"},
      {"header is an array", raw_safetensors("[1,2]", ""), "not a JSON object"},
      {"entry not an object", raw_safetensors("{\"a\":5}", ""), "entry is not an object"},
      {"missing data_offsets", raw_safetensors(R"({"a":{"dtype":"F32","shape":[1]}})", ""), "missing 'data_offsets'"},
      {"missing dtype", raw_safetensors(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", f8.substr(0, 4)),
       "missing 'dtype'"},
      {"dtype not a string", raw_safetensors(R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", "abcd"),
       "dtype is not a string"},
      {"unknown dtype", file_of(entry("a", "F31", "[2]", 0, 8), f8), "unknown dtype 'F31'"},
      {"shape not an array", raw_safetensors(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", f8),
       "shape is not an array"},
      {"negative dimension", file_of(entry("a", "F32", "[-2]", 0, 8), f8), "non-negative integers"},
      {"fractional dimension", file_of(entry("a", "F32", "[2.5]", 0, 8), f8), "non-negative integers"},
      {"element count overflows", file_of(entry("a", "U8", "[4294967296,4294967296]", 0, 8), f8),
       "more elements than fit in 64 bits"},
      {"byte count overflows", file_of(entry("a", "F64", "[2305843009213693952]", 0, 8), f8), "overflows 64 bits"},
      {"offsets not a pair", raw_safetensors(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})", "x"),
       "data_offsets must be [begin, end]"},
      {"negative offset", raw_safetensors(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})", "x"),
       "non-negative integers"},
      {"end before begin", file_of(entry("a", "U8", "[0]", 8, 4), f8), "is before begin"},
      {"wrong byte count for shape", file_of(entry("a", "F32", "[3]", 0, 8), f8), "needs 12"},
      {"offsets past the end", file_of(entry("a", "F32", "[4]", 0, 16), f8), "past the end of the data"},
      {"header claims a terabyte", file_of(entry("a", "U8", "[1099511627776]", 0, 1099511627776ULL), f8),
       "past the end of the data"},
      {"overlapping tensors", file_of(entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[1]", 4, 8), f8),
       "overlaps tensor 'a'"},
      {"hole between tensors", file_of(entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "U8", "[2]", 6, 8), f8),
       "hole of 2 bytes"},
      {"data not starting at zero", file_of(entry("a", "F32", "[1]", 4, 8), f8), "hole of 4 bytes"},
      {"trailing bytes", file_of(entry("a", "F32", "[1]", 0, 4), f8), "4 bytes of data after the last tensor"},
      {"duplicate tensor names", file_of(entry("a", "F32", "[1]", 0, 4) + "," + entry("a", "F32", "[1]", 4, 8), f8),
       "duplicate key"},
      {"duplicate field",
       raw_safetensors(R"({"a":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}})", "x"), "duplicate key"},
      {"metadata not an object", raw_safetensors(R"({"__metadata__":[1]})", ""), "__metadata__ is not an object"},
      {"metadata value not a string", raw_safetensors(R"({"__metadata__":{"format":1}})", ""), "is not a string"},
  };
  return c;
}

TEST(SafetensorsMalformed, CatalogueHasAtLeastTwentyCases) {
  EXPECT_GE(catalogue().size(), 20u);
}

TEST(SafetensorsMalformed, EachGivesItsSpecificError) {
  TempDir dir;
  for (const auto& m : catalogue()) {
    const auto path = dir / "bad.safetensors";
    write_bytes(path, m.bytes);
    try {
      SafetensorsReader r(path);
      ADD_FAILURE() << m.name << ": accepted";
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(m.expected), std::string::npos) << m.name << ": got \"" << msg << "\"";
      EXPECT_EQ(msg.rfind(path.string(), 0), 0u) << m.name << ": message does not start with the file";
      EXPECT_EQ(msg.find('\n'), std::string::npos) << m.name << ": not one line";
    } catch (const std::exception& e) {
      ADD_FAILURE() << m.name << ": wrong exception type: " << e.what();
    }
  }
}

TEST(SafetensorsMalformed, EveryTruncationOfAValidFileIsRejected) {
  TempDir dir;
  for (size_t n = 0; n < kGoldenFile.size(); ++n) {
    write_bytes(dir / "t.safetensors", kGoldenFile.substr(0, n));
    EXPECT_THROW(SafetensorsReader(dir / "t.safetensors"), InputError) << "truncated to " << n;
  }
}

// SequentialFile, which merges write their outputs through: the file holds exactly the
// bytes appended, whatever their lengths against its 4096-byte blocks and 8 MB buffers
// (the last block is padded for O_DIRECT and the padding trimmed), past the page cache and
// through it alike; 40 MB reuses each of its four buffers while the writers work.
TEST(SequentialFiles, HoldExactlyTheBytesAppended) {
  TempDir dir;
  std::mt19937 rng(7);
  const size_t kBuffer = size_t{8} << 20;
  for (const bool bypass : {true, false})
    for (const size_t total : {size_t{0}, size_t{1}, size_t{4095}, size_t{4096}, size_t{4097}, kBuffer - 1, kBuffer,
                               kBuffer + 5000, 2 * kBuffer + 4096, 5 * kBuffer + 123}) {
      std::string bytes(total, '\0');
      for (auto& c : bytes) c = static_cast<char>(rng());
      const fs::path sub = dir / (bypass ? "direct" : "buffered");
      fs::create_directories(sub);
      const fs::path path = sub / std::to_string(total);
      SequentialFile file(path, bypass);
      // Appends of uneven sizes, some larger than the buffer, and bytes filled in place.
      size_t done = 0;
      while (done < total) {
        const size_t n = std::min<size_t>(total - done, rng() % (3 * kBuffer / 2) + 1);
        if (rng() % 2) {
          file.append(std::as_bytes(std::span(bytes.data() + done, n)));
          done += n;
          continue;
        }
        const std::span<std::byte> space = file.reserve(n);
        ASSERT_TRUE(!space.empty() && space.size() <= n);
        const size_t filled = space.size() - rng() % space.size();  // commit a part, at least a byte
        std::memcpy(space.data(), bytes.data() + done, filled);
        file.commit(filled);
        done += filled;
      }
      EXPECT_EQ(file.size(), total);
      file.finish();
      EXPECT_EQ(fs::file_size(path), total) << path;
      EXPECT_TRUE(read_bytes(path) == bytes) << path;
    }
}

// A write that fails (here the device is full) is an error naming the file, thrown to the
// caller from a later append or from finish(), not lost in the writer threads.
TEST(SequentialFiles, AFailedWriteIsThrownNamingTheFile) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  std::string message;
  try {
    SequentialFile file("/dev/full");
    const std::string bytes(size_t{3} << 20, 'x');
    for (int i = 0; i < 40; ++i) file.append(std::as_bytes(std::span(bytes)));
    file.finish();
  } catch (const std::exception& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("/dev/full"), std::string::npos) << message;
}

// Tensors written in plan order through the stream give the same file, byte for byte, as
// the same tensors written at their offsets; a tensor out of plan order is refused.
TEST(Safetensors, WritingInPlanOrderGivesTheSameFile) {
  TempDir dir;
  std::vector<TensorSpec> plan;
  std::vector<Tensor> tensors;
  std::mt19937 rng(3);
  for (int64_t n : {3, 5000, 1 << 20, 7, 2100000}) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<float>(rng() % 1000) - 500.0f;
    tensors.push_back(Tensor::from_f32({n}, v).to(n % 2 ? DType::BF16 : DType::F32));
    plan.push_back({"t" + std::to_string(n), tensors.back().dtype(), {n}});
  }
  for (const WriteOrder order : {WriteOrder::Any, WriteOrder::Plan}) {
    SafetensorsWriter w(dir / (order == WriteOrder::Plan ? "plan.safetensors" : "any.safetensors"), plan,
                        {{"format", "pt"}}, order);
    for (size_t i = 0; i < plan.size(); ++i) w.write(plan[i].name, tensors[i]);
    w.finish();
  }
  EXPECT_TRUE(read_bytes(dir / "plan.safetensors") == read_bytes(dir / "any.safetensors"));
  SafetensorsReader r(dir / "plan.safetensors");
  EXPECT_TRUE(r.tensor("t5000").to(DType::F32).data<float>()[4999] == tensors[1].data<float>()[4999]);

  SafetensorsWriter w(dir / "out_of_order.safetensors", plan, {{"format", "pt"}}, WriteOrder::Plan);
  EXPECT_THROW(w.write(plan[1].name, tensors[1]), std::logic_error);

  // The same tensors in pieces: appended, and filled in place through reserve/commit.
  {
    SafetensorsWriter pieces(dir / "pieces.safetensors", plan, {{"format", "pt"}}, WriteOrder::Plan);
    for (size_t i = 0; i < plan.size(); ++i) {
      std::span<const std::byte> bytes = tensors[i].bytes();
      EXPECT_THROW(pieces.append(plan[(i + 1) % plan.size()].name, bytes.first(1)), std::logic_error);
      while (!bytes.empty()) {
        const size_t n = std::min<size_t>(bytes.size(), rng() % 3000000 + 1);
        if (rng() % 2) {
          pieces.append(plan[i].name, bytes.first(n));
          bytes = bytes.subspan(n);
        } else {
          const std::span<std::byte> space = pieces.reserve(plan[i].name, n);
          std::memcpy(space.data(), bytes.data(), space.size());
          pieces.commit(plan[i].name, space.size());
          bytes = bytes.subspan(space.size());
        }
      }
    }
    EXPECT_THROW(pieces.append(plan[0].name, tensors[0].bytes().first(1)), std::logic_error);
    pieces.finish();
  }
  EXPECT_TRUE(read_bytes(dir / "pieces.safetensors") == read_bytes(dir / "any.safetensors"));
}

}  // namespace
}  // namespace amalgam
