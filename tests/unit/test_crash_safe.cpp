// Crash-safe saving: whatever happens to a save part-way (the process is killed, the disk
// fills up at any byte, several savers race), the file at the target path is always one
// complete version, loadable and byte-identical to what was saved; and any valid target
// name can be saved, keeping the permissions of the file it replaces.
#include <catch2/catch.hpp>

#ifdef AGE_HAVE_IO

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/io/model_io.hpp"
#include "age/io/safetensors.hpp"

using namespace age;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

namespace {

fs::path scratch_dir(const std::string& name) {
  const fs::path dir = fs::path(AGE_TEST_BINARY_DIR) / "crash_safe_tmp" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A small model whose parameters depend on `seed`.
EmbeddingCtrModel small_model(std::uint64_t seed) {
  FeatureLayout layout;
  layout.add_categorical("user_id", Side::User, 20, 3)
      .add_multi_hot("user_tags", Side::User, 8, 2, Pooling::Mean)
      .add_categorical("item_id", Side::Item, 30, 4)
      .add_dense("item_price", Side::Item, 1);
  EmbeddingCtrModel model(layout, {6});
  Rng rng(seed);
  model.initialize(rng, 0.2);
  return model;
}

// A model whose file is large enough (about 32 MiB) that writing it takes a while, so a
// kill can land in the middle. Filled with a cheap pattern instead of random numbers.
EmbeddingCtrModel big_model() {
  FeatureLayout layout;
  layout.add_categorical("user_id", Side::User, 16, 4).add_categorical("item_id", Side::Item, std::size_t{1} << 19, 16);
  EmbeddingCtrModel model(layout, {8});
  Matrix& items = model.tables().table(1);
  for (Index k = 0; k < items.size(); ++k) items.data()[k] = static_cast<Scalar>(k % 1024) * 0.0009765625f;
  Rng rng(77);
  model.tower().initialize(rng);
  return model;
}

Bytes file_bytes(const EmbeddingCtrModel& model) { return serialize_safetensors(model_to_safetensors(model)); }

std::vector<fs::path> entries(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename());
  std::sort(out.begin(), out.end());
  return out;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// The temporary file a saver with process id `pid` is writing next to `target`, if any.
std::optional<fs::path> temp_of(const fs::path& target, pid_t pid) {
  const std::string prefix = "." + target.filename().string() + ".tmp." + std::to_string(pid) + ".";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(target.parent_path(), ec))
    if (starts_with(e.path().filename().string(), prefix)) return e.path();
  return std::nullopt;
}

}  // namespace

TEST_CASE("a saver killed part-way leaves the previous file loadable and byte-identical", "[crash-safe]") {
  const fs::path dir = scratch_dir("killed");
  const fs::path target = dir / "model.safetensors";
  const EmbeddingCtrModel old_model = small_model(1);
  const EmbeddingCtrModel big = big_model();
  const Bytes new_bytes = file_bytes(big);

  int killed_mid_write = 0, killed_before_rename = 0, finished_first = 0;
  for (int trial = 0; trial < 8 && killed_mid_write < 1; ++trial) {
    save_model(target, old_model);
    const Bytes old_bytes = read_file_bytes(target);
    for (const fs::path& p : entries(dir))
      if (p != "model.safetensors") fs::remove(dir / p);  // the last trial's leftover

    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      // The child saves the big model; the parent kills it while the write is under way.
      try {
        save_model(target, big);
      } catch (...) {
        ::_exit(3);
      }
      ::_exit(0);
    }

    // Wait for the child's temporary file to appear and start filling, then SIGKILL it.
    bool partial_at_kill = false;
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (const auto temp = temp_of(target, child)) {
        std::error_code ec;
        const auto size = fs::file_size(*temp, ec);
        if (!ec && size > 0) {
          partial_at_kill = size < new_bytes.size();
          break;
        }
      }
      int status = 0;
      if (::waitpid(child, &status, WNOHANG) == child) {  // finished before we looked
        REQUIRE(WIFEXITED(status));
        REQUIRE(WEXITSTATUS(status) == 0);
        break;
      }
      std::this_thread::sleep_for(50us);
    }
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);

    // Invariant: the target is one complete version, never a mix or a prefix.
    const Bytes now = read_file_bytes(target);
    const bool is_old = now == old_bytes, is_new = now == new_bytes;
    INFO("trial " << trial << ": target has " << now.size() << " bytes");
    REQUIRE((is_old || is_new));
    (void)load_model(target);  // loads either way
    if (is_new) {
      ++finished_first;
      continue;
    }
    ++killed_before_rename;
    if (partial_at_kill) ++killed_mid_write;

    // The killed saver's temporary file stays behind (hidden, named after the dead
    // process); it is truncated, and loading it is refused, never half-accepted.
    const auto leftover = temp_of(target, child);
    if (leftover && fs::file_size(*leftover) < new_bytes.size())
      CHECK_THROWS_AS(load_model(*leftover), FormatError);
  }
  INFO("killed mid-write " << killed_mid_write << ", before rename " << killed_before_rename << ", finished first "
                           << finished_first);
  CHECK(killed_mid_write >= 1);

  // The leftovers do not get in the way of the next save.
  const EmbeddingCtrModel next = small_model(2);
  save_model(target, next);
  CHECK(read_file_bytes(target) == file_bytes(next));
}

TEST_CASE("the disk filling up at any byte of the save leaves the previous file intact", "[crash-safe]") {
  const fs::path dir = scratch_dir("full_disk");
  const fs::path target = dir / "model.safetensors";
  const EmbeddingCtrModel old_model = small_model(3);
  save_model(target, old_model);
  const Bytes old_bytes = read_file_bytes(target);
  const EmbeddingCtrModel next = small_model(4);
  const Bytes next_bytes = file_bytes(next);
  std::uint64_t header = 0;
  for (int i = 0; i < 8; ++i) header |= static_cast<std::uint64_t>(next_bytes[static_cast<std::size_t>(i)]) << (8 * i);

  // RLIMIT_FSIZE makes writes past the limit fail (EFBIG), as a full disk would (ENOSPC):
  // cut inside the length field, the header, the first tensor, the middle, the last byte.
  const std::vector<std::size_t> cuts{0, 1, 7, 8, 8 + static_cast<std::size_t>(header) / 2,
                                      8 + static_cast<std::size_t>(header), 8 + static_cast<std::size_t>(header) + 5,
                                      next_bytes.size() / 2, next_bytes.size() - 1};
  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
  auto* previous_handler = std::signal(SIGXFSZ, SIG_IGN);
  for (std::size_t cut : cuts) {
    INFO("writes fail after byte " << cut << " of " << next_bytes.size());
    rlimit limited = saved;
    limited.rlim_cur = static_cast<rlim_t>(cut);
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &limited) == 0);
    std::string message;
    try {
      save_model(target, next);
    } catch (const IoError& e) {
      message = e.what();
    }
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &saved) == 0);
    CHECK_THAT(message, Catch::Contains("cannot save '" + target.string() + "'"));
    CHECK(read_file_bytes(target) == old_bytes);
    CHECK(entries(dir) == std::vector<fs::path>{"model.safetensors"});  // no temporary left
  }
  std::signal(SIGXFSZ, previous_handler);
  save_model(target, next);
  CHECK(read_file_bytes(target) == next_bytes);
}

TEST_CASE("stale temporary files, even with the name the saver picks next, do not disturb saving", "[crash-safe]") {
  const fs::path dir = scratch_dir("stale_temp");
  const fs::path target = dir / "model.safetensors";
  save_model(target, small_model(5));

  // A dead process with this process's id (ids are reused) left files under the exact
  // names this process will try next: the saver must skip them, not truncate or reuse them.
  const std::uint64_t next_counter = detail::temp_file_counter.load();
  std::vector<fs::path> stale;
  for (std::uint64_t k = 0; k < 5; ++k) {
    std::string name = ".model.safetensors.tmp.";
    name += std::to_string(::getpid());
    name += '.';
    name += std::to_string(next_counter + k);
    stale.push_back(dir / name);
    std::ofstream(stale.back(), std::ios::binary) << "stale " << k;
  }
  std::string other_pid = ".model.safetensors.tmp.999999999.0";
  stale.push_back(dir / other_pid);
  std::ofstream(stale.back(), std::ios::binary) << "from another process";

  const EmbeddingCtrModel next = small_model(6);
  save_model(target, next);
  CHECK(read_file_bytes(target) == file_bytes(next));
  for (std::size_t k = 0; k < stale.size(); ++k) {
    INFO("stale file " << stale[k]);
    REQUIRE(fs::exists(stale[k]));
    std::ifstream in(stale[k]);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(text == (k < 5 ? "stale " + std::to_string(k) : std::string("from another process")));
  }
  CHECK(entries(dir).size() == stale.size() + 1);  // nothing else left behind
}

TEST_CASE("racing savers and a reader: every load sees one complete version", "[crash-safe]") {
  const fs::path dir = scratch_dir("racing");
  const fs::path target = dir / "model.safetensors";
  const std::vector<EmbeddingCtrModel> models{small_model(10), small_model(11), small_model(12)};
  std::vector<Bytes> versions;
  for (const auto& m : models) versions.push_back(file_bytes(m));
  save_model(target, models[0]);

  constexpr int kSavesPerWriter = 60;
  std::atomic<int> writers_finished{0};
  std::atomic<int> save_errors{0};
  std::vector<std::thread> writers;
  for (int w = 1; w <= 2; ++w)
    writers.emplace_back([&, w] {
      for (int i = 0; i < kSavesPerWriter; ++i) {
        try {
          save_model(target, models[static_cast<std::size_t>(w)]);
        } catch (const Error&) {
          save_errors.fetch_add(1);
        }
      }
      writers_finished.fetch_add(1);
    });
  // Load while the writers replace the file, and a little after.
  int loads = 0, bad_loads = 0, unknown = 0;
  while (writers_finished.load() < 2 || loads < 200) {
    try {
      const Bytes now = read_file_bytes(target);
      bool known = false;
      for (const Bytes& v : versions) known = known || now == v;
      unknown += !known;
      (void)model_from_safetensors(parse_safetensors(now));
    } catch (const Error&) {
      ++bad_loads;
    }
    ++loads;
  }
  for (auto& t : writers) t.join();
  CHECK(save_errors.load() == 0);
  CHECK(bad_loads == 0);
  CHECK(unknown == 0);
  const Bytes final_bytes = read_file_bytes(target);
  CHECK((final_bytes == versions[1] || final_bytes == versions[2]));
  CHECK(entries(dir) == std::vector<fs::path>{"model.safetensors"});
}

namespace {
mode_t mode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}
}  // namespace

TEST_CASE("a model of 250-byte (and 255-byte) file name saves: the temporary name is cut to fit", "[crash-safe]") {
  const fs::path dir = scratch_dir("long_name");
  const EmbeddingCtrModel model = small_model(1);
  for (const std::size_t length : {std::size_t{250}, std::size_t{255}}) {
    const std::string name = std::string(length - 12, 'm') + ".safetensors";
    REQUIRE(name.size() == length);
    save_model(dir / name, model);
    CHECK(entries(dir) == std::vector<fs::path>{name});
    CHECK(load_model(dir / name).layout() == model.layout());
    save_model(dir / name, small_model(9));  // over an existing file too
    CHECK(entries(dir) == std::vector<fs::path>{name});
    fs::remove(dir / name);
  }
  // The cut keeps whole UTF-8 characters and the name limit.
  std::string multibyte;
  for (int i = 0; i < 84; ++i) multibyte += "\xC3\xA9";  // 168 bytes of é
  const std::string temp = detail::temp_file_name(multibyte + std::string(80, 'x'), ".tmp.1234567.89", 255);
  CHECK(temp.size() <= 255);
  CHECK(detail::invalid_utf8_at(temp) == std::string_view::npos);
  CHECK(temp.front() == '.');
  CHECK_THAT(temp, Catch::EndsWith(".tmp.1234567.89"));
  CHECK(detail::temp_file_name("short", ".tmp.1.2", 255) == ".short.tmp.1.2");
}

TEST_CASE("saving over a file keeps its permissions (private weights stay private)", "[crash-safe]") {
  const fs::path dir = scratch_dir("permissions");
  const fs::path path = dir / "private.safetensors";
  const EmbeddingCtrModel model = small_model(1);
  const mode_t old_umask = ::umask(022);
  save_model(path, model);
  CHECK(mode_of(path) == 0644);  // a new file: 0666 less the umask

  for (const mode_t mode : {mode_t{0600}, mode_t{0640}, mode_t{0444}, mode_t{0660}}) {
    REQUIRE(::chmod(path.c_str(), mode) == 0);
    save_model(path, small_model(static_cast<std::uint64_t>(mode)));
    CHECK(mode_of(path) == mode);
    save_tower(path, model.tower());
    CHECK(mode_of(path) == mode);
  }
  // A umask stricter than the file's mode does not narrow it either.
  REQUIRE(::chmod(path.c_str(), 0664) == 0);
  ::umask(077);
  save_model(path, model);
  CHECK(mode_of(path) == 0664);
  ::umask(old_umask);
  CHECK(entries(dir) == std::vector<fs::path>{"private.safetensors"});
}

#else

TEST_CASE("crash-safe saving needs the io headers", "[crash-safe]") {
  WARN("skipped: nlohmann_json not found, age/io not tested");
}

#endif
