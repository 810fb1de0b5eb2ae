// Weight files as an attacker or a careless caller would give them (issue 20): finite but
// absurd weights, names and metadata the JSON header cannot hold, headers and configs
// with a NUL byte and garbage after it, error kinds and the file named in every message,
// files that are not regular files, and the loader's peak memory. Each must end in an
// age::Error, never a crash, another exception type, a hang or an unbounded allocation.
#include <catch2/catch.hpp>

#ifdef AGE_HAVE_IO

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "age/explore/gate.hpp"
#include "age/io/model_io.hpp"
#include "age/io/safetensors.hpp"
#include "scratch_files.hpp"
#include "small_model.hpp"

using namespace age;
namespace fs = std::filesystem;

namespace {

// REQUIRE that fn throws exactly the age::Error subclass E with a message containing
// every one of `parts`.
template <class E>
void require_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  REQUIRE_THROWS_AS(fn(), E);
  REQUIRE_THROWS_AS(fn(), Error);
  for (const std::string& p : parts) REQUIRE_THROWS_WITH(fn(), Catch::Contains(p));
}

using age_test::small_layout;
using age_test::small_model;

// Every weight of the tower multiplied by `factor`.
void scale_weights(Tower& tower, Scalar factor) {
  Tower::Edit e = tower.edit();
  for (std::size_t l = 0; l < tower.num_layers(); ++l) e.weight(l) *= factor;
}

using age_test::Bytes;

fs::path fresh_dir(const std::string& name) { return age_test::fresh_dir("hardening_tmp", name); }

using age_test::write_bytes;

// A file assembled from a header text (length field = its size) and a data buffer.
Bytes assemble(const std::string& header, const Bytes& buffer) {
  // Sized once and copied into (GCC 12 misreports insert() after 8 bytes as out of bounds).
  Bytes out(8 + header.size() + buffer.size());
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(header.size() >> (8 * i));
  std::copy(header.begin(), header.end(), out.begin() + 8);
  std::copy(buffer.begin(), buffer.end(), out.begin() + 8 + static_cast<std::ptrdiff_t>(header.size()));
  return out;
}

struct Split {
  std::string header;
  Bytes buffer;
};
Split split(const Bytes& file) {
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(file[static_cast<std::size_t>(i)]) << (8 * i);
  return {std::string(file.begin() + 8, file.begin() + 8 + static_cast<std::ptrdiff_t>(n)),
          Bytes(file.begin() + 8 + static_cast<std::ptrdiff_t>(n), file.end())};
}

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_CASE("absurd weights in a file are refused at load, naming the file, tensor, element and limit",
          "[io-hardening]") {
  const fs::path dir = fresh_dir("huge_weights");
  EmbeddingCtrModel model = small_model();
  Safetensors st = model_to_safetensors(model);
  // Finite but huge: what overflows every score to NaN. Written by hand (save refuses it).
  TensorData w = st.at("tower.1.weight");
  const float huge = 1e30f;
  std::memcpy(w.bytes.data() + 4 * 5, &huge, 4);
  Safetensors bad;
  bad.metadata() = st.metadata();
  for (const std::string& name : st.names()) bad.add(name, name == "tower.1.weight" ? w : st.at(name));
  const fs::path path = dir / "huge.safetensors";
  write_bytes(path, serialize_safetensors(bad));

  const std::vector<std::string> parts{path.string(), "tensor 'tower.1.weight'", "element 5 = 1e+30",
                                       "expected a magnitude <= 1e+06", "max_abs_parameter"};
  require_error<FormatError>([&] { load_model(path); }, parts);
  require_error<FormatError>([&] { model_from_safetensors(bad, "buf"); }, {"buf", "element 5 = 1e+30"});
  // The same for an embedding table and a lone tower.
  TensorData e = st.at("embedding.item_id");
  const float neg = -3e7f;
  std::memcpy(e.bytes.data(), &neg, 4);
  Safetensors bad_table;
  bad_table.metadata() = st.metadata();
  for (const std::string& name : st.names()) bad_table.add(name, name == "embedding.item_id" ? e : st.at(name));
  require_error<FormatError>([&] { model_from_safetensors(bad_table); }, {"'embedding.item_id'", "element 0 = -3e+07"});

  // The bound is an option: raised, the file loads, and scoring it reports the overflow.
  SafetensorsReadOptions loose;
  loose.max_abs_parameter = 1e31;
  const EmbeddingCtrModel loaded = load_model(path, nullptr, loose);
  CHECK(loaded.tower().weight(1)(0, 5) == huge);
  CHECK(kDefaultMaxAbsParameter == 1e6);

  // Saving refuses what the default bound refuses, naming the file; the old file stays.
  save_model(dir / "ok.safetensors", model);
  const Bytes before = read_file_bytes(dir / "ok.safetensors");
  scale_weights(model.tower(), 1e7f);
  require_error<InputError>([&] { save_model(dir / "ok.safetensors", model); },
                            {"cannot save '" + (dir / "ok.safetensors").string() + "'", "cannot save tensor 'tower.",
                             "expected a magnitude <= 1e+06"});
  CHECK(read_file_bytes(dir / "ok.safetensors") == before);
}

TEST_CASE("names and metadata that are not UTF-8 are an age::Error, never the JSON library's exception",
          "[io-hardening]") {
  const fs::path dir = fresh_dir("utf8");
  const fs::path path = dir / "m.safetensors";
  const EmbeddingCtrModel model = small_model();
  save_model(path, model);
  const Bytes before = read_file_bytes(path);
  const std::string bad = "caf\xC3";  // a 2-byte sequence cut short

  require_error<FormatError>([&] { save_model(path, model, {{"note", bad}}); },
                             {"cannot save '" + path.string() + "'", "value of metadata key 'note'", "UTF-8",
                              "offset 3"});
  require_error<FormatError>([&] { save_model(path, model, {{"k\xFF", "v"}}); },
                             {"metadata key 'k\\xff'", "expected valid UTF-8"});
  FeatureLayout layout;
  layout.add_categorical("user\xE9", Side::User, 4, 2).add_categorical("item", Side::Item, 4, 2);
  const EmbeddingCtrModel bad_field(layout, {4});
  require_error<FormatError>([&] { save_model(path, bad_field); }, {path.string(), "field name 'user\\xe9'"});
  require_error<ConfigError>([&] { save_tower(path, model.tower(), "t\x80"); }, {path.string(), "tower prefix"});
  Safetensors st;
  st.add_f32("w\xC0\xAF", {1}, std::vector<float>{1.0f});  // an overlong '/'
  require_error<FormatError>([&] { serialize_safetensors(st); }, {"tensor name 'w\\xc0\\xaf'"});
  CHECK(read_file_bytes(path) == before);
  CHECK(entries(dir) == std::vector<std::string>{"m.safetensors"});

  // Valid UTF-8 beyond ASCII round-trips.
  FeatureLayout intl;
  intl.add_categorical("用户", Side::User, 4, 2).add_categorical("artículo", Side::Item, 4, 2);
  EmbeddingCtrModel named(intl, {4});
  Rng rng(2);
  named.initialize(rng);
  save_model(path, named, {{"note", "caf\xC3\xA9 \xF0\x9F\x98\x80"}});
  Safetensors::Metadata meta;
  const EmbeddingCtrModel back = load_model(path, &meta);
  CHECK(back.layout() == named.layout());
  CHECK(meta.at("note") == "caf\xC3\xA9 \xF0\x9F\x98\x80");

  // The validator itself: every kind of malformed sequence.
  CHECK(detail::invalid_utf8_at("plain ascii") == std::string_view::npos);
  CHECK(detail::invalid_utf8_at("\xE2\x82\xAC \xF4\x8F\xBF\xBF") == std::string_view::npos);  // U+20AC, U+10FFFF
  CHECK(detail::invalid_utf8_at("ab\xC0\x80") == 2);              // overlong NUL
  CHECK(detail::invalid_utf8_at("\xED\xA0\x80") == 0);            // a surrogate
  CHECK(detail::invalid_utf8_at("x\xF4\x90\x80\x80") == 1);       // above U+10FFFF
  CHECK(detail::invalid_utf8_at("xy\xE2\x82") == 2);              // cut short
  CHECK(detail::invalid_utf8_at("\x80") == 0);                    // a lone continuation byte
  CHECK(detail::invalid_utf8_at("\xE0\x9F\xBF") == 0);            // overlong 3-byte form
}

TEST_CASE("a header or config with a NUL byte and garbage after it is refused (JSON to the last byte)",
          "[io-hardening]") {
  const fs::path dir = fresh_dir("nul");
  const fs::path path = dir / "m.safetensors";
  const EmbeddingCtrModel model = small_model();
  const Bytes good = serialize_safetensors(model_to_safetensors(model));
  const Split parts = split(good);

  // The header: valid JSON, then a NUL byte and garbage, inside the declared length.
  std::string header = parts.header;
  while (!header.empty() && header.back() == ' ') header.pop_back();
  const std::string tail = std::string("\0", 1) + "{\"evil\": true} garbage";
  write_bytes(path, assemble(header + tail, parts.buffer));
  require_error<FormatError>([&] { load_model(path); },
                             {path.string(), "header is not valid JSON", "NUL byte at offset " +
                                                                            std::to_string(header.size())});
  require_error<FormatError>([&] { parse_safetensors(assemble(header + tail, parts.buffer)); }, {"NUL byte"});
  require_error<FormatError>([&] { read_safetensors(path); }, {"NUL byte"});
  // A NUL byte as padding is not JSON whitespace either; spaces are (the writer's padding).
  write_bytes(path, assemble(header + std::string(3, '\0'), parts.buffer));
  require_error<FormatError>([&] { load_model(path); }, {"NUL byte"});
  write_bytes(path, assemble(header + "   ", parts.buffer));
  CHECK_NOTHROW(load_model(path));

  // The config JSON inside the metadata: its string may hold a NUL (escaped \u0000 in the
  // header), which must not end the config early.
  Safetensors st = model_to_safetensors(model);
  st.metadata()["age.config"] += std::string("\0", 1) + "{\"hidden\": [99999999]}";
  write_bytes(path, serialize_safetensors(st));
  require_error<FormatError>([&] { load_model(path); },
                             {path.string(), "metadata 'age.config' is not valid JSON", "NUL byte"});
  st = model_to_safetensors(model, {});
  add_tower(st, "dgu", make_dgu_tower(model.item_dim(), 4));
  st.metadata()["age.tower.dgu"] += std::string("\0garbage", 8);
  require_error<FormatError>([&] { model_from_safetensors(st, "buf"); }, {"metadata 'age.tower.dgu'", "NUL byte"});
}

TEST_CASE("error kinds match the documentation and every file error names the file", "[io-hardening]") {
  const fs::path dir = fresh_dir("kinds");
  const EmbeddingCtrModel model = small_model();
  // Reserved metadata prefixes: FormatError (as a reserved tensor name is), on every path.
  require_error<FormatError>([&] { model_to_safetensors(model, {{"age.mine", "x"}}); }, {"'age.mine'", "reserved"});
  require_error<FormatError>([&] { save_model(dir / "m.safetensors", model, {{"age.", "x"}}); },
                             {(dir / "m.safetensors").string(), "reserved"});
  require_error<FormatError>([&] { save_tower(dir / "t.safetensors", model.tower(), "tower", {{"age.x", "y"}}); },
                             {(dir / "t.safetensors").string(), "reserved"});
  // Saving an empty model or tower: ConfigError naming the file.
  require_error<ConfigError>([&] { save_model(dir / "m.safetensors", EmbeddingCtrModel()); },
                             {(dir / "m.safetensors").string(), "cannot save model", "empty"});
  require_error<ConfigError>([&] { save_tower(dir / "t.safetensors", Tower()); },
                             {(dir / "t.safetensors").string(), "cannot save tower", "empty"});
  // A non-finite weight: InputError naming the file and the tensor.
  EmbeddingCtrModel nan_model = small_model();
  nan_model.tower().edit().weight(0)(1, 1) = std::numeric_limits<Scalar>::quiet_NaN();
  require_error<InputError>([&] { save_model(dir / "m.safetensors", nan_model); },
                            {(dir / "m.safetensors").string(), "tower.0.weight", "not finite"});
  CHECK(entries(dir).empty());

  // Loading: a directory and a missing file are IoErrors naming the path; a file that
  // shrinks under the reader, or stops short, a FormatError naming it.
  require_error<IoError>([&] { load_model(dir); }, {dir.string(), "it is a directory"});
  require_error<IoError>([&] { load_model(dir / "missing.safetensors"); },
                         {(dir / "missing.safetensors").string(), "No such file"});
  const Bytes good = serialize_safetensors(model_to_safetensors(model));
  write_bytes(dir / "short.safetensors", Bytes(good.begin(), good.end() - 1));
  require_error<FormatError>([&] { load_model(dir / "short.safetensors"); },
                             {"safetensors file '" + (dir / "short.safetensors").string() + "'"});
  require_error<FormatError>([&] { load_tower(dir / "short.safetensors"); },
                             {(dir / "short.safetensors").string()});
}

TEST_CASE("only regular files are read: a FIFO or a device is refused at once, never waited on", "[io-hardening]") {
  const fs::path dir = fresh_dir("fifo");
  const fs::path fifo = dir / "model.safetensors";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // Should the loader block on the FIFO after all, this thread opens its write end (then
  // closes it) so that the loader gets an end of file and the test fails instead of hanging.
  std::atomic<bool> done{false};
  std::thread unblocker([&] {
    while (!done.load()) {
      const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) ::close(fd);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  const std::vector<std::string> parts{fifo.string(), "not a regular file"};
  auto check_refused = [&](const std::function<void()>& fn) {
    std::optional<IoError> error;
    try {
      fn();
    } catch (const IoError& e) {
      error = e;
    } catch (const Error&) {
    }
    return error;
  };
  const std::optional<IoError> model_error = check_refused([&] { load_model(fifo); });
  const std::optional<IoError> tower_error = check_refused([&] { load_tower(fifo); });
  const std::optional<IoError> read_error = check_refused([&] { read_safetensors(fifo); });
  const std::optional<IoError> bytes_error = check_refused([&] { read_file_bytes(fifo); });
  done = true;
  unblocker.join();
  REQUIRE(model_error);
  REQUIRE(tower_error);
  REQUIRE(read_error);
  REQUIRE(bytes_error);
  for (const std::string& p : parts) {
    CHECK_THAT(std::string(model_error->what()), Catch::Contains(p));
    CHECK_THAT(std::string(bytes_error->what()), Catch::Contains(p));
  }
  for (const char* device : {"/dev/zero", "/dev/null"}) {
    if (!fs::exists(device)) continue;
    require_error<IoError>([&] { load_model(device); }, {device, "not a regular file"});
  }
}

namespace {

// Peak resident memory of running `fn` in a child process, in bytes above the child's
// resident memory before it (the kernel's high-water mark, reset first); nullopt where the
// kernel cannot say, or under a sanitizer (its shadow memory and quarantine are not ours).
std::optional<long> peak_memory_of(const std::function<void()>& fn) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  (void)fn;
  return std::nullopt;
#else
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
  (void)fn;
  return std::nullopt;
#endif
#endif
  auto status_kb = [](const char* field) -> long {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind(field, 0) == 0) return std::stol(line.substr(std::strlen(field)));
    return -1;
  };
  int fds[2];
  if (::pipe(fds) != 0) return std::nullopt;
  const pid_t child = ::fork();
  if (child < 0) return std::nullopt;
  if (child == 0) {
    ::close(fds[0]);
    long result = -1;
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";  // resets VmHWM to the current resident size
    clear.close();
    const long before = status_kb("VmRSS:");
    try {
      fn();
      const long peak = status_kb("VmHWM:");
      if (clear.good() && before >= 0 && peak >= 0) result = (peak - before) * 1024;
    } catch (...) {
      result = -2;
    }
    (void)!::write(fds[1], &result, sizeof result);
    ::_exit(0);
  }
  ::close(fds[1]);
  long result = -1;
  const bool got = ::read(fds[0], &result, sizeof result) == static_cast<ssize_t>(sizeof result);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  REQUIRE(got);
  REQUIRE(result != -2);  // fn threw in the child
  if (result < 0) return std::nullopt;
  return result;
#endif
}

}  // namespace

TEST_CASE("load_model checks the header first and reads tensors in place: peak memory ~ the model",
          "[io-hardening]") {
  const fs::path dir = fresh_dir("memory");
  SECTION("a 1 GiB file whose header describes no tensor is refused from its header") {
    const fs::path path = dir / "sparse.safetensors";
    const Bytes head = assemble("{}", {});
    write_bytes(path, head);
    fs::resize_file(path, std::uint64_t{1} << 30);  // sparse: costs no disk
    require_error<FormatError>([&] { load_model(path); }, {path.string(), "trailing bytes belong to no tensor"});
    const std::optional<long> peak = peak_memory_of([&] {
      try {
        (void)load_model(path);
      } catch (const FormatError&) {
      }
    });
    if (!peak) WARN("peak memory not measured (no /proc/self/clear_refs, or a sanitizer build)");
    if (peak) CHECK(*peak < 16L << 20);  // reading the file whole would take 1 GiB
  }
  SECTION("a 32 MiB model loads with less than 1.25 times its size at peak") {
    FeatureLayout layout;
    layout.add_categorical("user_id", Side::User, 16, 4).add_categorical("item_id", Side::Item, std::size_t{1} << 19, 16);
    EmbeddingCtrModel big(layout, {8});
    Matrix& table = big.tables().table(1);
    for (Index k = 0; k < table.size(); ++k) table.data()[k] = static_cast<Scalar>(k % 1024) * 0.0009765625f;
    const fs::path path = dir / "big.safetensors";
    save_model(path, big);
    const auto size = static_cast<long>(fs::file_size(path));
    REQUIRE(size > (32L << 20));
    const std::optional<long> peak = peak_memory_of([&] {
      const EmbeddingCtrModel loaded = load_model(path);
      if (loaded.tables().table(1)(3, 5) != table(3, 5)) throw std::runtime_error("wrong value");
    });
    if (!peak) WARN("peak memory not measured (no /proc/self/clear_refs, or a sanitizer build)");
    if (peak) {
      INFO("file " << size << " bytes, peak " << *peak << " bytes");
      CHECK(*peak < size + size / 4 + (8L << 20));  // reading it whole first took twice the file
    }
  }
}
#else
TEST_CASE("weight-file hardening needs the io headers", "[io-hardening]") {
  WARN("skipped: nlohmann_json not found, age/io not tested");
}
#endif
