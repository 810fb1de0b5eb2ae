// The interface between a policy under evaluation and the runners of age/sim/replay.hpp.
// An Agent sees a visit as raw features (the user's active feature ids and the candidate
// article ids), picks one candidate, and learns from the feedback it is given; how it
// embeds, scores and trains is its own business (the study's is examples/replay/
// model_agent.hpp). Needs nothing beyond the standard library, so an agent can be written
// and tested without zlib.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace age::sim {

// One visit as a policy sees it. `id` numbers the visit (log line or visit index) and
// seeds the request's exploration randomness together with the policy's seed.
struct Context {
  std::uint64_t id = 0;
  std::span<const std::uint32_t> user;        // active feature ids
  std::span<const std::uint64_t> candidates;  // article ids
};

// One logged impression (warm-start data).
struct Impression {
  std::vector<std::uint32_t> user;
  std::uint64_t article = 0;
  bool click = false;
};

class Agent {
 public:
  virtual ~Agent() = default;
  // Trains on the warm-start impressions (the same for every policy of a seed).
  virtual void warm_start(std::span<const Impression> data) = 0;
  // The position (in ctx.candidates) of the article to show.
  virtual std::size_t choose(const Context& ctx) = 0;
  // Feedback for the article at `shown` of the context last passed to choose().
  virtual void learn(const Context& ctx, std::size_t shown, bool clicked) = 0;
};

}  // namespace age::sim
