// A decoder language model's forward as `amalgam lm eval` runs it, against the machine's own
// SGEMM peak.
//
//   lm_forward CHECKPOINT [--sequences 8] [--length 512] [--runs 3] [--save DIR]
//
// Scores `sequences` seeded random token sequences of `length` tokens (every position after
// the first predicted): embed, each block converted from the mapped checkpoint and run, then
// the negative log-likelihood over the vocabulary in slices. Times the whole of it (median of
// --runs, after one warm-up) and the best of a few SGEMMs of the model's MLP shape. With
// --save, the ids and amalgam's per-token NLL go to DIR so that bench/torch_lm_forward.py can
// time PyTorch on the same input and compare. Prints one JSON object.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/parallel.h"
#include "core/random.h"
#include "model/decoder.h"

using namespace amalgam;
using namespace amalgam::bench;

namespace {

// Multiply-adds x 2 of scoring `sequences` sequences of `length` tokens: every block's
// projections and MLP per token, causal attention (QK^T and PV over the lower triangle), and
// the output layer for every position.
double forward_flops(const DecoderConfig& c, int64_t sequences, int64_t length) {
  const double d = static_cast<double>(c.hidden_size), f = static_cast<double>(c.intermediate_size);
  const double q = static_cast<double>(c.num_attention_heads * c.head_dim);
  const double kv = static_cast<double>(c.num_key_value_heads * c.head_dim);
  const double mlp = (c.layout.gate.empty() ? 2 : 3) * d * f;
  const double per_token_block = 2 * (d * q + 2 * d * kv + q * d + mlp);
  const double n = static_cast<double>(length), tokens = static_cast<double>(sequences) * n;
  const double attention = static_cast<double>(sequences) * 4 * q * n * (n + 1) / 2;
  return static_cast<double>(c.num_hidden_layers) * (tokens * per_token_block + attention) +
         tokens * 2 * d * static_cast<double>(c.vocab_size);
}

std::vector<double> score(const DecoderModel& model, const std::vector<std::vector<int32_t>>& ids,
                          const std::vector<int32_t>& targets) {
  Stream stream = model.embed(ids);
  DecoderBlockWeights block;
  for (int64_t l = 0; l < model.config().num_hidden_layers; ++l) {
    model.load_block(l, block);
    model.run_block(l, block, stream);
  }
  return model.negative_log_likelihood(stream, targets);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: lm_forward CHECKPOINT [--sequences N] [--length N] [--runs N] [--save DIR]\n";
    return 2;
  }
  const std::filesystem::path checkpoint = argv[1];
  int64_t sequences = 8, length = 512;
  int runs = 3;
  std::filesystem::path save;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--sequences" && i + 1 < argc)
      sequences = std::stoll(argv[++i]);
    else if (arg == "--length" && i + 1 < argc)
      length = std::stoll(argv[++i]);
    else if (arg == "--runs" && i + 1 < argc)
      runs = std::stoi(argv[++i]);
    else if (arg == "--save" && i + 1 < argc)
      save = argv[++i];
    else {
      std::cerr << "lm_forward: unknown argument '" << arg << "'\n";
      return 2;
    }
  }
  const auto t_open = Clock::now();
  const DecoderModel model = DecoderModel::open(checkpoint);
  const double open_s = seconds_since(t_open);
  const auto& c = model.config();

  std::vector<std::vector<int32_t>> ids(static_cast<size_t>(sequences));
  std::vector<int32_t> targets;
  for (int64_t s = 0; s < sequences; ++s) {
    for (int64_t t = 0; t < length; ++t)
      ids[static_cast<size_t>(s)].push_back(
          static_cast<int32_t>(mix64(static_cast<uint64_t>(s * length + t) + 1) % static_cast<uint64_t>(c.vocab_size)));
    for (int64_t t = 0; t < length; ++t)
      targets.push_back(t + 1 < length ? ids[static_cast<size_t>(s)][static_cast<size_t>(t + 1)] : -1);
  }
  std::vector<double> nll = score(model, ids, targets);  // warm-up: page faults, BLAS threads
  std::vector<double> times;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = Clock::now();
    nll = score(model, ids, targets);
    times.push_back(seconds_since(t0));
  }
  const double t = median(times);
  const double flops = forward_flops(c, sequences, length);
  const double peak = sgemm_peak_gflops(sequences * length, c.intermediate_size, c.hidden_size);
  if (!save.empty()) {
    std::filesystem::create_directories(save);
    std::ofstream out(save / "ids.json");
    out << nlohmann::json(ids).dump();
    std::ofstream(save / "nll.json") << nlohmann::json(nll).dump();
  }
  const double tokens = static_cast<double>(sequences * length);
  const nlohmann::json out = {{"model", c.model_type},
                              {"checkpoint", checkpoint.string()},
                              {"sequences", sequences},
                              {"length", length},
                              {"threads", num_threads()},
                              {"runs", runs},
                              {"open_seconds", open_s},
                              {"forward_seconds_median", t},
                              {"forward_seconds_all", times},
                              {"tokens_per_second", tokens / t},
                              {"forward_gflops", flops / t / 1e9},
                              {"sgemm_peak_gflops", peak},
                              {"fraction_of_sgemm_peak", flops / t / 1e9 / peak}};
  std::cout << out.dump(2) << "\n";
  return 0;
}
