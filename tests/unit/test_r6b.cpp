// The R6B log format: parsing golden lines, plain and gzip giving the same events, every
// kind of malformed line rejected with file:line, skip-and-count mode, writer -> reader
// round trips; and the reader's hardening: a bounded line length, no data silently lost
// after a gzip stream, a directory refused as an I/O error.
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "age/core/error.hpp"
#include "age/sim/r6b.hpp"

using namespace age;
using namespace age::sim;

namespace {

const std::string kData = std::string(AGE_TEST_DATA_DIR) + "/r6b/";

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::path(AGE_TEST_BINARY_DIR) / "r6b_tmp";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::vector<R6bEvent> read_all(const std::string& path, R6bReadOptions options = {}) {
  R6bReader reader(path, options);
  std::vector<R6bEvent> out;
  R6bEvent e;
  while (reader.next(e)) out.push_back(e);
  return out;
}

}  // namespace

TEST_CASE("R6B parser reads the example line of METHOD.md", "[r6b]") {
  R6bEvent e;
  parse_r6b_line("1317513292 id-552077 0 |user 1 7 11 37 13 |id-552077 |id-555224 |id-555528", e);
  CHECK(e.timestamp == 1317513292);
  CHECK(e.displayed == 552077);
  CHECK_FALSE(e.click);
  CHECK(e.user == std::vector<std::uint32_t>{1, 7, 11, 37, 13});
  CHECK(e.candidates == std::vector<std::uint64_t>{552077, 555224, 555528});
  CHECK(e.displayed_index() == 0);
  CHECK(format_r6b_line(e) == "1317513292 id-552077 0 |user 1 7 11 37 13 |id-552077 |id-555224 |id-555528");
}

TEST_CASE("R6B reader parses the golden sample file", "[r6b]") {
  const auto events = read_all(kData + "sample.txt");
  REQUIRE(events.size() == 5);
  CHECK(events[0].timestamp == 1317513291);
  CHECK(events[0].displayed == 560620);
  CHECK(events[0].user.size() == 19);
  CHECK(events[0].candidates.size() == 26);
  CHECK(events[0].displayed_index() == 7);
  CHECK(events[2].click);
  CHECK(events[2].user == std::vector<std::uint32_t>{1});
  CHECK(events[3].user == std::vector<std::uint32_t>{1, 2, 136});
  CHECK(events[3].candidates == std::vector<std::uint64_t>{559744});
  CHECK(events[4].click);
  CHECK(events[4].candidates == std::vector<std::uint64_t>{565822, 552077});
  // Golden: the canonical lines written back reproduce the file byte for byte.
  std::string text;
  for (const auto& e : events) text += format_r6b_line(e) + "\n";
  CHECK(text == read_text(kData + "sample.txt"));
}

TEST_CASE("R6B reader gives the same events from the gzip file and the plain file", "[r6b]") {
  const auto plain = read_all(kData + "sample.txt");
  const auto gz = read_all(kData + "sample.txt.gz");
  REQUIRE(plain.size() == 5);
  CHECK(gz == plain);
}

TEST_CASE("R6B reader rejects each kind of malformed line naming file and line", "[r6b]") {
  const std::string good = "1317513292 id-552077 0 |user 1 7 |id-552077 |id-555224\n";
  struct Case {
    std::string line, reason;
  };
  const std::vector<Case> cases{
      {"", "empty line"},
      {"   ", "empty line"},
      {"13175x3292 id-552077 0 |user 1 |id-552077", "timestamp: expected an integer, got '13175x3292'"},
      {"1317513292", "displayed id: expected 'id-<digits>', got end of line"},
      {"1317513292 552077 0 |user 1 |id-552077", "displayed id: expected an article id 'id-<digits>', got '552077'"},
      {"1317513292 id-55x 0 |user 1 |id-552077", "displayed id: expected an article id"},
      {"1317513292 id-552077 2 |user 1 |id-552077", "click: expected 0 or 1, got '2'"},
      {"1317513292 id-552077", "click: expected 0 or 1, got end of line"},
      {"1317513292 id-552077 0 1 7 |id-552077", "user section: expected '|user', got '1'"},
      {"1317513292 id-552077 0", "user section: expected '|user', got end of line"},
      {"1317513292 id-552077 0 |user 1 x7 |id-552077", "user feature 2: expected an integer in [1, 136], got 'x7'"},
      {"1317513292 id-552077 0 |user 1 137 |id-552077", "user feature 2: expected an integer in [1, 136], got '137'"},
      {"1317513292 id-552077 0 |user 0 |id-552077", "user feature 1: expected an integer in [1, 136], got '0'"},
      {"1317513292 id-552077 0 |user 1 7", "candidates: expected at least 1 '|id-<digits>', got none"},
      {"1317513292 id-552077 0 |user 1 |id-552077 |xd-1", "candidate 2: expected an article id 'id-<digits>', got '|xd-1'"},
      {"1317513292 id-552077 0 |user 1 |id-552077 |", "candidate 2: expected an article id"},
      {"1317513292 id-552077 0 |user 1 |id-552077 7", "candidate 2: expected '|id-<digits>', got '7'"},
      {"1317513292 id-552077 0 |user 1 |id-555224", "displayed id: expected one of the 1 candidates, got id-552077"},
  };
  int k = 0;
  for (const Case& c : cases) {
    const std::string path = temp_path("bad_" + std::to_string(k++) + ".txt");
    write_text(path, good + c.line + "\n" + good);
    INFO("line: '" << c.line << "'");
    try {
      (void)read_all(path);
      FAIL("no FormatError");
    } catch (const FormatError& e) {
      const std::string msg = e.what();
      CHECK(msg.find(path + ":2: ") == 0);
      CHECK_THAT(msg, Catch::Contains(c.reason));
    }
  }
}

TEST_CASE("R6B reader in skip mode skips and counts malformed lines", "[r6b]") {
  const std::string path = temp_path("mixed.txt.gz");
  {
    // Written through zlib, so that skipping is also checked on a compressed file.
    gzFile f = gzopen(path.c_str(), "wb");
    REQUIRE(f != nullptr);
    const std::string text =
        "1 id-1 0 |user 1 |id-1\n"
        "garbage\n"
        "2 id-2 1 |user 1 2 |id-1 |id-2\n"
        "3 id-9 0 |user 1 |id-1\n"
        "4 id-1 7 |user 1 |id-1\n"
        "\n"
        "5 id-3 0 |user 3 |id-3";  // last line without newline
    gzwrite(f, text.data(), static_cast<unsigned>(text.size()));
    gzclose(f);
  }
  R6bReader reader(path, R6bReadOptions{.skip_malformed = true});
  R6bEvent e;
  std::vector<std::int64_t> ts;
  while (reader.next(e)) ts.push_back(e.timestamp);
  CHECK(ts == std::vector<std::int64_t>{1, 2, 5});
  CHECK(reader.events() == 3);
  CHECK(reader.skipped() == 4);
  CHECK(reader.line_number() == 7);
  CHECK_THAT(reader.first_skipped(), Catch::StartsWith(path + ":2: timestamp"));
}

TEST_CASE("R6B reader handles long lines and a missing file", "[r6b]") {
  R6bEvent e;
  e.timestamp = 1317513291;
  e.displayed = 552000;
  for (std::uint32_t f = 1; f <= 136; ++f) e.user.push_back(f);
  for (std::uint64_t c = 0; c < 2000; ++c) e.candidates.push_back(552000 + c);  // ~26 kB line
  const std::string path = temp_path("long.txt");
  write_text(path, format_r6b_line(e) + "\n");
  const auto back = read_all(path);
  REQUIRE(back.size() == 1);
  CHECK(back[0] == e);

  CHECK_THROWS_AS(R6bReader(temp_path("does_not_exist.txt")), IoError);
  CHECK_THROWS_WITH(R6bReader(temp_path("does_not_exist.txt")), Catch::Contains("does_not_exist.txt"));
}

TEST_CASE("R6B writer and reader round trip, plain and gzip", "[r6b]") {
  std::vector<R6bEvent> events;
  for (int i = 0; i < 300; ++i) {
    R6bEvent e;
    e.timestamp = 1317513291 + i / 3;
    e.click = i % 7 == 0;
    e.user = {1, static_cast<std::uint32_t>(2 + i % 135), static_cast<std::uint32_t>(136 - i % 50)};
    for (int c = 0; c < 5 + i % 30; ++c) e.candidates.push_back(552000 + static_cast<std::uint64_t>((i * 7 + c * 13) % 652));
    e.displayed = e.candidates[static_cast<std::size_t>(i) % e.candidates.size()];
    events.push_back(e);
  }
  for (const std::string name : {"round.txt", "round.txt.gz"}) {
    const std::string path = temp_path(name);
    R6bWriter w(path);
    for (const auto& e : events) w.write(e);
    CHECK(w.lines() == events.size());
    w.close();
    CHECK(read_all(path) == events);
  }
  // The .gz file is compressed (gzip magic), the other one is plain text.
  const std::string gz = read_text(temp_path("round.txt.gz"));
  REQUIRE(gz.size() > 2);
  CHECK(static_cast<unsigned char>(gz[0]) == 0x1f);
  CHECK(static_cast<unsigned char>(gz[1]) == 0x8b);
  CHECK(read_text(temp_path("round.txt")).rfind(format_r6b_line(events[0]) + "\n", 0) == 0);
}

TEST_CASE("R6B parser options: feature bound and displayed-in-candidates check", "[r6b]") {
  R6bEvent e;
  R6bFormat open{.max_user_feature = 0, .require_displayed_in_candidates = false};
  parse_r6b_line("5 id-9 1 |user 500 |id-1", e, open);
  CHECK(e.user == std::vector<std::uint32_t>{500});
  CHECK(e.displayed_index() == -1);
  CHECK_THROWS(parse_r6b_line("5 id-9 1 |user 500 |id-1", e));
}

namespace {

// `text` gzip-compressed, as one member.
std::string gzip(const std::string& text) {
  z_stream zs{};
  REQUIRE(deflateInit2(&zs, Z_BEST_SPEED, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  std::string out(deflateBound(&zs, static_cast<uLong>(text.size())), '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
  zs.avail_in = static_cast<uInt>(text.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

// The FormatError message of reading the whole file, or nullopt when it reads through.
std::optional<std::string> read_error(const std::string& path, R6bReadOptions options, std::vector<R6bEvent>* events) {
  try {
    R6bReader reader(path, options);
    R6bEvent e;
    while (reader.next(e)) events->push_back(e);
  } catch (const FormatError& e) {
    return std::string(e.what());
  }
  return std::nullopt;
}

const std::string kLine1 = "1 id-1 0 |user 1 |id-1";
const std::string kLine2 = "2 id-2 1 |user 2 |id-1 |id-2";

}  // namespace

TEST_CASE("R6B reader: a line longer than max_line_bytes is refused, or skipped, without holding it",
          "[r6b]") {
  const std::string path = temp_path("long_line.txt");
  const std::size_t limit = 64;
  std::string long_line = "3 id-3 0 |user";  // well-formed, only long
  for (int i = 0; i < 100; ++i) long_line += " 7";
  long_line += " |id-3";
  write_text(path, kLine1 + "\n" + long_line + "\n" + kLine2 + "\n");
  SECTION("strict: FormatError naming file, line and limit") {
    std::vector<R6bEvent> events;
    const auto error = read_error(path, {.max_line_bytes = limit}, &events);
    REQUIRE(error);
    CHECK_THAT(*error, Catch::StartsWith(path + ":2: line length: expected at most 64 bytes") &&
                           Catch::Contains("max_line_bytes"));
    CHECK(events.size() == 1);
  }
  SECTION("skip_malformed: skipped and counted, the next line read whole") {
    R6bReader reader(path, {.skip_malformed = true, .max_line_bytes = limit});
    R6bEvent e;
    std::vector<std::int64_t> ts;
    while (reader.next(e)) ts.push_back(e.timestamp);
    CHECK(ts == std::vector<std::int64_t>{1, 2});
    CHECK(reader.skipped() == 1);
    CHECK(reader.line_number() == 3);
    CHECK_THAT(reader.first_skipped(), Catch::Contains(":2: line length"));
  }
  SECTION("a line of exactly the limit is read; the limit is an option") {
    std::vector<R6bEvent> events;
    CHECK_FALSE(read_error(path, {.max_line_bytes = long_line.size()}, &events));
    CHECK(events.size() == 3);
    events.clear();
    CHECK(read_error(path, {.max_line_bytes = long_line.size() - 1}, &events));
    CHECK(R6bReadOptions{}.max_line_bytes == (std::size_t{1} << 20));
    CHECK(kDefaultMaxR6bLineBytes == (std::size_t{1} << 20));
  }
  SECTION("a limit of 0 is a ConfigError") {
    CHECK_THROWS_AS(R6bReader(path, {.max_line_bytes = 0}), ConfigError);
    CHECK_THROWS_WITH(R6bReader(path, {.max_line_bytes = 0}), Catch::Contains("max_line_bytes: expected >= 1, got 0"));
  }
}

TEST_CASE("R6B reader: a small gzip of one 64 MiB line is refused in bounded memory", "[r6b]") {
  const std::string path = temp_path("bomb.txt.gz");
  {
    std::string line = "1 id-1 0 |user 1 ";
    line.append(std::size_t{64} << 20, '7');
    write_text(path, gzip(line + "\n" + kLine2 + "\n"));
  }
  REQUIRE(std::filesystem::file_size(path) < (1u << 20));
  std::vector<R6bEvent> events;
  const auto error = read_error(path, {}, &events);
  REQUIRE(error);
  CHECK_THAT(*error, Catch::StartsWith(path + ":1: line length: expected at most 1048576 bytes"));
  R6bReader reader(path, {.skip_malformed = true});
  R6bEvent e;
  REQUIRE(reader.next(e));
  CHECK(e.timestamp == 2);
  CHECK(reader.skipped() == 1);

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  // Peak resident memory of reading it, in a child process (the kernel's high-water mark,
  // reset first): the reader keeps at most max_line_bytes of a line.
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto kb = [](const char* field) {
      std::ifstream in("/proc/self/status");
      std::string line;
      while (std::getline(in, line))
        if (line.rfind(field, 0) == 0) return std::stol(line.substr(std::strlen(field)));
      return -1L;
    };
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";
    clear.close();
    const long before = kb("VmRSS:");
    long growth = -1;
    try {
      R6bReader r(path, {.skip_malformed = true});
      R6bEvent ev;
      while (r.next(ev)) {
      }
      if (clear.good()) growth = (kb("VmHWM:") - before) * 1024;
    } catch (...) {
    }
    (void)!::write(fds[1], &growth, sizeof growth);
    ::_exit(0);
  }
  ::close(fds[1]);
  long growth = -1;
  REQUIRE(::read(fds[0], &growth, sizeof growth) == static_cast<ssize_t>(sizeof growth));
  ::close(fds[0]);
  ::waitpid(child, nullptr, 0);
  if (growth < 0) {
    WARN("peak memory not measured (no /proc/self/clear_refs)");
  } else {
    INFO("peak growth " << growth << " bytes");
    CHECK(growth < (8L << 20));  // the whole line would be 64 MiB (and ~130 MiB with string growth)
  }
#endif
}

TEST_CASE("R6B reader: data after the end of a gzip stream is an error, never dropped", "[r6b]") {
  const std::string member = gzip(kLine1 + "\n" + kLine2 + "\n");
  SECTION("a plain text tail") {
    const std::string path = temp_path("tail.txt.gz");
    write_text(path, member + "3 id-3 0 |user 3 |id-3\n4 id-4 0 |user 4 |id-4\n");
    for (const bool skip : {false, true}) {
      std::vector<R6bEvent> events;
      const auto error = read_error(path, {.skip_malformed = skip}, &events);
      REQUIRE(error);
      CHECK_THAT(*error, Catch::StartsWith(path + ":3: data after the end of the gzip stream at byte " +
                                           std::to_string(member.size())) &&
                             Catch::Contains("expected another gzip member or the end of the file"));
      CHECK(events.size() == 2);  // the member's lines come first
    }
  }
  SECTION("zero padding and a lone byte") {
    for (const std::string& tail : {std::string(512, '\0'), std::string(1, '\x1f')}) {
      const std::string path = temp_path("padded.txt.gz");
      write_text(path, member + tail);
      std::vector<R6bEvent> events;
      CHECK(read_error(path, {}, &events));
    }
  }
  SECTION("concatenated members are one stream (as gzip -d reads them)") {
    const std::string path = temp_path("members.txt.gz");
    write_text(path, member + gzip("5 id-5 1 |user 5 |id-5\n") + gzip(""));
    std::vector<R6bEvent> events;
    CHECK_FALSE(read_error(path, {}, &events));
    REQUIRE(events.size() == 3);
    CHECK(events[2].timestamp == 5);
  }
  SECTION("a truncated or corrupt stream") {
    const std::string path = temp_path("cut.txt.gz");
    write_text(path, member.substr(0, member.size() - 4));
    std::vector<R6bEvent> events;
    auto error = read_error(path, {.skip_malformed = true}, &events);
    REQUIRE(error);
    CHECK_THAT(*error, Catch::Contains("cannot decompress") && Catch::StartsWith(path + ":"));
    std::string corrupt = member;
    corrupt[corrupt.size() - 6] = static_cast<char>(corrupt[corrupt.size() - 6] ^ 0x55);  // the CRC
    write_text(path, corrupt);
    error = read_error(path, {}, &events);
    REQUIRE(error);
    CHECK_THAT(*error, Catch::Contains("cannot decompress"));
  }
}

TEST_CASE("R6B reader: a directory is an IoError naming it; a FIFO is read as a stream", "[r6b]") {
  const std::string dir = temp_path("a_directory");
  std::filesystem::create_directories(dir);
  CHECK_THROWS_AS(R6bReader(dir), IoError);
  CHECK_THROWS_WITH(R6bReader(dir), Catch::Contains("R6B log '" + dir + "'") && Catch::Contains("it is a directory"));

  // A log piped in (e.g. from zcat) is a legitimate source: read to its end.
  const std::string fifo = temp_path("piped.fifo");
  std::filesystem::remove(fifo);
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const std::string text = gzip(kLine1 + "\n" + kLine2 + "\n");
  const pid_t writer = ::fork();
  REQUIRE(writer >= 0);
  if (writer == 0) {
    std::ofstream out(fifo, std::ios::binary);
    out << text;
    out.close();  // _exit() does not flush
    ::_exit(0);
  }
  const auto events = read_all(fifo);
  ::waitpid(writer, nullptr, 0);
  REQUIRE(events.size() == 2);
  CHECK(events[1].timestamp == 2);
}
