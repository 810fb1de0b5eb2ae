// Umbrella header: every public header of age that needs nothing beyond Eigen.
// The weight-file headers (age/io/, need nlohmann_json) and the offline-study headers
// (age/sim/, need zlib) are included on their own.
#pragma once

#include "age/core/error.hpp"
#include "age/core/limits.hpp"
#include "age/core/rng.hpp"
#include "age/core/status.hpp"
#include "age/core/types.hpp"
#include "age/explore/ablation.hpp"
#include "age/explore/baselines.hpp"
#include "age/explore/gate.hpp"
#include "age/explore/perturbation.hpp"
#include "age/explore/request.hpp"
#include "age/explore/scorer.hpp"
#include "age/explore/uncertainty.hpp"
#include "age/features/embedding.hpp"
#include "age/features/layout.hpp"
#include "age/model/ctr_model.hpp"
#include "age/model/dropout.hpp"
#include "age/model/embedding_model.hpp"
#include "age/model/finite_difference.hpp"
#include "age/model/sigmoid.hpp"
#include "age/model/tower.hpp"
#include "age/serve/model_holder.hpp"
#include "age/train/loss.hpp"
#include "age/train/optimizer.hpp"
#include "age/train/trainer.hpp"
