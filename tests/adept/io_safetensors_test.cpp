// safetensors: files written by the Python `safetensors` package read identically; our
// writer round-trips; every malformed input is refused with the file and tensor named.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.hpp"
#include "io/atomic_writer.hpp"
#include "io/safetensors.hpp"
#include "io/safetensors_writer.hpp"

namespace adept {
namespace {

namespace fs = std::filesystem;
const std::string kFixtures = std::string(ADEPT_SOURCE_DIR) + "/tests/fixtures/safetensors";

// A fresh directory under /tmp, removed with everything in it at the end of the test.
struct ScratchDir {
  fs::path path;
  explicit ScratchDir(const std::string& name)
      : path(fs::temp_directory_path() / ("adept_io_safetensors_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~ScratchDir() { fs::remove_all(path); }
  fs::path operator/(const std::string& name) const { return path / name; }
};

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out << bytes;
}

// A safetensors file from a header text and a data section of data_bytes zero bytes.
std::string make_file(const std::string& header, size_t data_bytes) {
  uint64_t n = header.size();
  std::string s(reinterpret_cast<const char*>(&n), 8);
  return s + header + std::string(data_bytes, '\0');
}

// The message of the adept::Error that opening `bytes` as a file named `name` throws.
std::string open_error(const std::string& bytes, const std::string& name = "model.safetensors") {
  ScratchDir dir("bad");
  fs::path p = dir / name;
  write_bytes(p, bytes);
  try {
    SafetensorsFile f(p.string());
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_CONTAINS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// --- reading what the reference implementation wrote ---------------------------------

TEST(SafetensorsRead, PythonWrittenFileReadsIdentically) {
  SafetensorsFile f(kFixtures + "/mixed.safetensors");
  nlohmann::json expected = nlohmann::json::parse(read_text(kFixtures + "/mixed.expected.json"));
  ASSERT_EQ(f.tensors().size(), expected["tensors"].size());
  for (auto& [name, e] : expected["tensors"].items()) {
    SCOPED_TRACE(name);
    const SafetensorsTensor& t = f.tensor(name);
    EXPECT_EQ(dtype_name(t.dtype), e["dtype"].get<std::string>());
    EXPECT_EQ(t.shape, e["shape"].get<std::vector<int64_t>>());
    std::vector<float> values = f.read_f32(name);
    ASSERT_EQ(values.size(), e["values"].size());
    for (size_t i = 0; i < values.size(); ++i)
      EXPECT_EQ(bits(values[i]), bits(float(e["values"][i].get<double>()))) << "element " << i;
  }
}

TEST(SafetensorsRead, MetadataIsRead) {
  SafetensorsFile f(kFixtures + "/mixed.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "made by make_safetensors_fixtures.py");
}

TEST(SafetensorsRead, ShardedCheckpointIsReadThroughItsIndex) {
  SafetensorsCheckpoint ckpt(kFixtures + "/sharded");
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(ckpt.files().size(), 2u);
  std::vector<float> a(12), b(6), c(8);
  ckpt.read_f32("a", a);
  ckpt.read_f32("b", b);
  ckpt.read_f32("c", c);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(a[i], float(i));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(b[i], float(i) - 2.5f);
  EXPECT_EQ(c[0], -1.0f);
  EXPECT_EQ(c[7], 1.0f);
  EXPECT_CONTAINS(ckpt.tensor("c").file->path(), "model-00002-of-00002.safetensors");
}

TEST(SafetensorsRead, MissingTensorIsNamedWithTheFile) {
  SafetensorsFile f(kFixtures + "/mixed.safetensors");
  try {
    f.tensor("lm_head.weight");
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "mixed.safetensors: no tensor named 'lm_head.weight'");
  }
}

// --- writing ---------------------------------------------------------------------------

TEST(SafetensorsWrite, RoundTripKeepsF32Exactly) {
  ScratchDir dir("roundtrip_f32");
  fs::path p = dir / "model.safetensors";
  std::vector<float> x = {1.0f, -2.5f, 3.14159265f, 1e-40f, -0.0f, 6.5e30f};
  std::vector<TensorToWrite> ts = {{"x", {2, 3}, x, DType::F32}};
  write_safetensors(p.string(), ts);
  SafetensorsFile f(p.string());
  EXPECT_EQ(f.tensor("x").shape, (std::vector<int64_t>{2, 3}));
  std::vector<float> back = f.read_f32("x");
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(bits(back[i]), bits(x[i]));
}

TEST(SafetensorsWrite, RoundTripRoundsOnceToTheStoredDtype) {
  ScratchDir dir("roundtrip_half");
  fs::path p = dir / "model.safetensors";
  std::vector<float> x(1000);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(float(i) * 0.37f) * float(i);
  std::vector<TensorToWrite> ts = {{"h", {1000}, x, DType::F16}, {"b", {10, 100}, x, DType::BF16}};
  write_safetensors(p.string(), ts);
  SafetensorsFile f(p.string());
  std::vector<float> h = f.read_f32("h"), b = f.read_f32("b");
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(h[i], f16_to_f32(f32_to_f16(x[i])));
    EXPECT_EQ(b[i], bf16_to_f32(f32_to_bf16(x[i])));
  }
}

TEST(SafetensorsWrite, HeaderHasFormatPtAndTheDataIsEightByteAligned) {
  ScratchDir dir("header");
  fs::path p = dir / "model.safetensors";
  std::vector<float> x = {1, 2, 3};
  std::vector<TensorToWrite> ts = {{"x", {3}, x, DType::BF16}};
  write_safetensors(p.string(), ts);
  std::string bytes = read_text(p);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["__metadata__"]["format"], "pt");
  EXPECT_EQ(header["x"]["dtype"], "BF16");
  EXPECT_EQ(header["x"]["data_offsets"], nlohmann::json({0, 6}));
}

TEST(SafetensorsWrite, ShardsByMaxSizeWithAnIndex) {
  ScratchDir dir("sharded");
  std::vector<float> x(100, 1.5f), y(100, -2.0f), z(50, 3.0f);
  std::vector<TensorToWrite> ts = {{"x", {100}, x}, {"y", {10, 10}, y}, {"z", {50}, z}};
  auto files = write_safetensors_checkpoint(dir.path.string(), ts, 600);  // x + y would be 800 bytes
  EXPECT_EQ(files, (std::vector<std::string>{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                             "model.safetensors.index.json"}));
  auto index = nlohmann::json::parse(read_text(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 1000);
  EXPECT_EQ(index["weight_map"]["x"], "model-00001-of-00002.safetensors");
  EXPECT_EQ(index["weight_map"]["y"], "model-00002-of-00002.safetensors");
  EXPECT_EQ(index["weight_map"]["z"], "model-00002-of-00002.safetensors");
  SafetensorsCheckpoint ckpt(dir.path.string());
  std::vector<float> back(100);
  ckpt.read_f32("y", back);
  EXPECT_EQ(back, y);
}

TEST(SafetensorsWrite, ASingleShardIsModelSafetensorsAndStaleShardsAreRemoved) {
  ScratchDir dir("reshard");
  std::vector<float> x(100, 1.0f), y(100, 2.0f);
  std::vector<TensorToWrite> ts = {{"x", {100}, x}, {"y", {100}, y}};
  write_safetensors_checkpoint(dir.path.string(), ts, 400);
  ASSERT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  auto files = write_safetensors_checkpoint(dir.path.string(), ts);
  EXPECT_EQ(files, std::vector<std::string>{"model.safetensors"});
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir / "model-00001-of-00002.safetensors"));
  EXPECT_EQ(SafetensorsCheckpoint(dir.path.string()).names(), (std::vector<std::string>{"x", "y"}));
}

TEST(SafetensorsWrite, ValuesDisagreeingWithTheShapeAreRefused) {
  ScratchDir dir("badshape");
  fs::path p = dir / "model.safetensors";
  std::vector<float> x(5);
  std::vector<TensorToWrite> ts = {{"x", {2, 3}, x}};
  try {
    write_safetensors(p.string(), ts);
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "tensor 'x': shape [2, 3] has 6 elements, 5 values given");
  }
  EXPECT_FALSE(fs::exists(p));
}

TEST(SafetensorsWrite, AnUncommittedWriteLeavesNoTraceAndKeepsTheOldFile) {
  ScratchDir dir("atomic");
  write_bytes(dir / "f.bin", "old");
  {
    AtomicFileWriter w((dir / "f.bin").string());
    w.write("new contents", 12);
  }  // destroyed without commit(), as when an exception unwinds
  EXPECT_EQ(read_text(dir / "f.bin"), "old");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()), 1);
}

// --- malformed files -------------------------------------------------------------------

TEST(SafetensorsMalformed, FileShorterThanTheLengthPrefix) {
  EXPECT_CONTAINS(open_error("abc"), "model.safetensors: file is 3 bytes, too short");
}

TEST(SafetensorsMalformed, HeaderLengthPastTheEndOfTheFile) {
  std::string f = make_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
  EXPECT_CONTAINS(open_error(f.substr(0, 30)), "model.safetensors: header length 54 runs past the end of the file (30 bytes)");
}

TEST(SafetensorsMalformed, TruncatedDataSectionNamesTheTensor) {
  std::string f = make_file(
      R"({"model.layers.0.mlp.up_proj.weight":{"dtype":"F32","shape":[4,2],"data_offsets":[0,32]}})", 32);
  EXPECT_CONTAINS(open_error(f.substr(0, f.size() - 8)),
                  "model.safetensors: tensor 'model.layers.0.mlp.up_proj.weight': data range [0, 32) exceeds the "
                  "data section (24 bytes)");
}

TEST(SafetensorsMalformed, OverlappingRangesNameBothTensors) {
  std::string f = make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                            12);
  EXPECT_CONTAINS(open_error(f), "model.safetensors: tensor 'b': data range [4, 12) overlaps tensor 'a' [0, 8)");
}

TEST(SafetensorsMalformed, UnknownDtypeIsNamed) {
  std::string f = make_file(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8);
  EXPECT_CONTAINS(open_error(f), "model.safetensors: tensor 'w': dtype 'F64' is not supported");
}

TEST(SafetensorsMalformed, ShapeDisagreeingWithTheByteRangeIsNamed) {
  std::string f = make_file(R"({"w":{"dtype":"BF16","shape":[3,3],"data_offsets":[0,16]}})", 16);
  EXPECT_CONTAINS(open_error(f), "tensor 'w': shape [3, 3] of BF16 needs 18 bytes, but data range [0, 16) holds 16");
}

TEST(SafetensorsMalformed, HugeShapeDoesNotOverflow) {
  std::string f = make_file(
      R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,0]}})", 0);
  EXPECT_CONTAINS(open_error(f), "tensor 'w': shape");
}

TEST(SafetensorsMalformed, HeaderThatIsNotJson) {
  EXPECT_CONTAINS(open_error(make_file("{\"x\": [1, 2", 0)), "model.safetensors: header is not valid JSON");
}

TEST(SafetensorsMalformed, DuplicateTensorNameIsRefused) {
  std::string f = make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                            R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                            8);
  EXPECT_CONTAINS(open_error(f), "tensor 'a' appears twice");
}

TEST(SafetensorsMalformed, MissingDataOffsetsIsNamed) {
  EXPECT_CONTAINS(open_error(make_file(R"({"w":{"dtype":"F32","shape":[1]}})", 4)),
                  "tensor 'w': 'data_offsets' must be two non-negative integers");
}

TEST(SafetensorsMalformed, IndexListingATensorItsShardLacks) {
  ScratchDir dir("badindex");
  fs::copy_file(kFixtures + "/sharded/model-00002-of-00002.safetensors", dir / "shard.safetensors");
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map": {"c": "shard.safetensors", "d": "shard.safetensors"}})");
  try {
    SafetensorsCheckpoint ckpt(dir.path.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "model.safetensors.index.json: tensor 'd' is listed for");
  }
}

TEST(SafetensorsMalformed, IndexPathOutsideTheDirectoryIsRefused) {
  ScratchDir dir("escape");
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map": {"c": "../elsewhere.safetensors"}})");
  try {
    SafetensorsCheckpoint ckpt(dir.path.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "weight_map['c'] = '../elsewhere.safetensors' must be a file name");
  }
}

// --- conversions -------------------------------------------------------------------------

TEST(DtypeConversion, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to the even mantissa (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-8f), 0x3F80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3F82);
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);  // above halfway rounds up
  EXPECT_EQ(f32_to_bf16(3.4e38f), 0x7F80);                    // overflow to inf
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_EQ(bf16_to_f32(0xC0490000u >> 16), -3.140625f);
}

TEST(DtypeConversion, F16EveryValueRoundTripsThroughF32) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
}

TEST(DtypeConversion, F16RoundsToNearestEvenIncludingSubnormals) {
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3C00);          // tie to even (down)
  EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);      // tie to even (up)
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);                 // half the smallest subnormal: tie to 0
  EXPECT_EQ(f32_to_f16(0x1p-25f * 1.0001f), 0x0001);       // just above: smallest subnormal
  EXPECT_EQ(f32_to_f16(3 * 0x1p-25f), 0x0002);             // 1.5 units: tie to even 2
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);                 // tie between max and "65536": inf
  EXPECT_EQ(f32_to_f16(-1e10f), 0xFC00);
  EXPECT_EQ(f32_to_f16(0x1p-14f - 0x1p-26f), 0x0400);      // rounds up into the smallest normal
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
}

#if defined(__FLT16_MAX__)
TEST(DtypeConversion, F16MatchesTheCompilersFloat16) {
  uint32_t state = 12345;
  for (int i = 0; i < 2000000; ++i) {
    state = state * 1664525u + 1013904223u;
    uint32_t u = state;
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) continue;
    _Float16 h = _Float16(f);
    uint16_t hb;
    std::memcpy(&hb, &h, 2);
    ASSERT_EQ(f32_to_f16(f), hb) << f;
    ASSERT_EQ(bits(f16_to_f32(hb)), bits(float(h)));
  }
}
#endif

}  // namespace
}  // namespace adept
