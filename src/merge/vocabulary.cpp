#include "merge/vocabulary.h"

#include <algorithm>
#include <cstring>
#include <iostream>
#include <set>

#include "core/dtype.h"
#include "core/error.h"
#include "io/json_file.h"
#include "merge/plan.h"

namespace amalgam {

namespace fs = std::filesystem;
// Plain (key-sorted) JSON, not ordered_json: ordered_json finds a key by a linear search, so
// parsing Llama 3's tokenizer.json (128,256 vocabulary keys) took 15.9 s against 0.25 s.
using Json = nlohmann::json;

namespace {

// The model's own vocabulary in a tokenizer.json: an object token -> id (BPE, WordPiece,
// WordLevel) or a list of [piece, score] whose index is the id (Unigram).
std::vector<std::pair<std::string, int64_t>> model_vocab(const Json& tokenizer, const fs::path& file) {
  if (!tokenizer.contains("model") || !tokenizer["model"].contains("vocab"))
    throw InputError(file, "no model.vocab: not a Hugging Face tokenizer.json");
  const Json& vocab = tokenizer["model"]["vocab"];
  std::vector<std::pair<std::string, int64_t>> out;
  if (vocab.is_object()) {
    for (const auto& [token, id] : vocab.items()) {
      if (!id.is_number_integer()) throw InputError(file, "model.vocab['" + token + "']: the id is not an integer");
      out.emplace_back(token, id.get<int64_t>());
    }
  } else if (vocab.is_array()) {
    for (size_t i = 0; i < vocab.size(); ++i) {
      if (!vocab[i].is_array() || vocab[i].empty() || !vocab[i][0].is_string())
        throw InputError(file, "model.vocab[" + std::to_string(i) + "]: expected [piece, score]");
      out.emplace_back(vocab[i][0].get<std::string>(), static_cast<int64_t>(i));
    }
  } else {
    throw InputError(file, "model.vocab is neither an object nor a list");
  }
  return out;
}

const Json& added_tokens_of(const Json& tokenizer) {
  static const Json none = Json::array();
  return tokenizer.contains("added_tokens") && tokenizer["added_tokens"].is_array() ? tokenizer["added_tokens"] : none;
}

// mergekit's get_stripped_tokenizer: the tokens at or past vocab_size (a tokenizer larger than
// its model's embeddings) leave the vocabulary, the added tokens and the merges. Returns
// whether any did.
bool strip_tokenizer(Json& tokenizer, int64_t vocab_size) {
  std::set<std::string> unused;
  Json& vocab = tokenizer["model"]["vocab"];
  if (vocab.is_object()) {
    Json kept = Json::object();
    for (const auto& [token, id] : vocab.items()) {
      if (id.get<int64_t>() < vocab_size)
        kept[token] = id;
      else
        unused.insert(token);
    }
    vocab = std::move(kept);
  } else if (vocab.is_array() && static_cast<int64_t>(vocab.size()) > vocab_size) {
    for (size_t i = static_cast<size_t>(vocab_size); i < vocab.size(); ++i) unused.insert(vocab[i][0]);
    vocab.erase(vocab.begin() + vocab_size, vocab.end());
  }
  if (tokenizer.contains("added_tokens")) {
    Json kept = Json::array();
    for (const auto& t : tokenizer["added_tokens"]) {
      if (t.value("id", int64_t{0}) < vocab_size)
        kept.push_back(t);
      else
        unused.insert(t.value("content", std::string()));
    }
    tokenizer["added_tokens"] = std::move(kept);
  }
  if (tokenizer["model"].contains("merges") && !unused.empty()) {
    Json kept = Json::array();
    for (const auto& m : tokenizer["model"]["merges"]) {
      std::vector<std::string> parts;
      if (m.is_string()) {
        const std::string s = m;
        const size_t space = s.find(' ');
        parts = {s.substr(0, space), space == std::string::npos ? "" : s.substr(space + 1)};
      } else {
        for (const auto& p : m) parts.push_back(p);
      }
      if (std::none_of(parts.begin(), parts.end(), [&](const std::string& p) { return unused.contains(p); }))
        kept.push_back(m);
    }
    tokenizer["model"]["merges"] = std::move(kept);
  }
  return !unused.empty();
}

// The settings transformers gives a token added by name (add_tokens(str)).
Json plain_added_token(const std::string& content) {
  return {{"id", 0},         {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", true}, {"special", false}};
}

// A tokenizer being built: tokenizers' add_tokens, which gives a token already in the
// vocabulary its id (it becomes an added token) and a new one the next id.
struct TokenizerBuilder {
  Json tokenizer;
  std::map<std::string, int64_t> ids;
  std::set<std::string> added;
  int64_t next = 0;

  explicit TokenizerBuilder(Json t, const fs::path& file) : tokenizer(std::move(t)) {
    for (const auto& [token, id] : model_vocab(tokenizer, file)) ids.emplace(token, id);
    if (!tokenizer.contains("added_tokens")) tokenizer["added_tokens"] = Json::array();
    for (const auto& a : tokenizer["added_tokens"]) {
      ids[a["content"].get<std::string>()] = a["id"].get<int64_t>();
      added.insert(a["content"].get<std::string>());
    }
    for (const auto& [token, id] : ids) next = std::max(next, id + 1);
  }

  // Returns whether the vocabulary changed.
  bool add(Json token) {
    const std::string content = token["content"];
    if (added.contains(content)) return false;
    const auto known = ids.find(content);
    const int64_t id = known != ids.end() ? known->second : next++;
    token["id"] = id;
    ids[content] = id;
    added.insert(content);
    tokenizer["added_tokens"].push_back(std::move(token));
    return true;
  }
};

}  // namespace

ModelTokens read_model_tokens(const fs::path& dir) {
  ModelTokens m;
  m.dir = dir;
  const fs::path file = dir / "tokenizer.json";
  if (!fs::is_regular_file(file))
    throw InputError(file,
                     "not found: a merge with tokenizer options maps embeddings by token, from each model's "
                     "tokenizer.json");
  const Json tokenizer = read_json_file(file);
  std::map<std::string, int64_t> all;
  for (const auto& [token, id] : model_vocab(tokenizer, file)) all.emplace(token, id);
  m.added = added_tokens_of(tokenizer);
  for (const auto& a : m.added) all[a.value("content", std::string())] = a.value("id", int64_t{0});
  m.vocab_size = static_cast<int64_t>(all.size());
  if (fs::is_regular_file(dir / "config.json")) {
    const nlohmann::json config = read_json_file(dir / "config.json");
    if (config.contains("vocab_size") && config["vocab_size"].is_number_integer())
      m.vocab_size = config["vocab_size"].get<int64_t>();
  }
  for (const auto& [token, id] : all)
    if (id < m.vocab_size) m.ids.emplace(token, id);
  return m;
}

OutputVocabulary build_output_vocabulary(const TokenizerSettings& settings, const std::vector<ModelTokens>& models) {
  const ModelTokens& base = models.front();
  OutputVocabulary out;
  const bool from_model = settings.source_path.has_value();
  const fs::path source_dir = from_model ? *settings.source_path : base.dir;
  out.files_from = source_dir;
  Json source = read_json_file(source_dir / "tokenizer.json");
  if (!from_model) out.changed = strip_tokenizer(source, base.vocab_size);
  TokenizerBuilder builder(std::move(source), source_dir / "tokenizer.json");

  if (settings.source == "union") {
    // Every model's plain tokens the base lacks, then every model's added tokens, in model order.
    std::map<std::string, Json> added_settings;
    std::vector<std::string> added_order, plain_order;
    std::set<std::string> plain_seen;
    for (const ModelTokens& m : models) {
      std::set<std::string> its_added;
      for (const Json& a : m.added) {
        const std::string content = a.value("content", std::string());
        its_added.insert(content);
        if (a.value("id", int64_t{0}) >= m.vocab_size || added_settings.contains(content)) continue;
        added_settings[content] = a;
        added_order.push_back(content);
      }
      std::vector<std::pair<int64_t, std::string>> by_id;
      for (const auto& [token, id] : m.ids)
        if (!its_added.contains(token)) by_id.emplace_back(id, token);
      std::sort(by_id.begin(), by_id.end());  // get_vocab's order: by id
      for (const auto& [id, token] : by_id)
        if (plain_seen.insert(token).second) plain_order.push_back(token);
    }
    for (const std::string& token : plain_order)
      if (!added_settings.contains(token) && !base.ids.contains(token))
        out.changed |= builder.add(plain_added_token(token));
    for (const std::string& token : added_order) {
      Json a = added_settings.at(token);
      out.changed |= builder.add(std::move(a));
    }
  } else if (settings.source != "base" && !from_model) {
    throw std::logic_error("build_output_vocabulary: unresolved tokenizer source " + settings.source);
  }
  if (from_model) out.changed = true;  // another model's files replace the base's
  for (const auto& [token, e] : settings.tokens) out.changed |= builder.add(plain_added_token(token));

  out.tokenizer = std::move(builder.tokenizer);
  out.ids = std::move(builder.ids);
  for (const auto& a : out.tokenizer["added_tokens"]) out.added.push_back(a);
  for (const auto& [token, id] : out.ids) out.rows = std::max(out.rows, id + 1);
  if (const auto m = settings.pad_to_multiple_of; m && out.rows % *m != 0) out.rows += *m - out.rows % *m;
  if (out.rows != base.vocab_size) out.changed = true;
  return out;
}

void write_tokenizer_files(const OutputVocabulary& vocabulary, const fs::path& dir) {
  write_text_file(dir / "tokenizer.json", vocabulary.tokenizer.dump(2) + "\n");
  const fs::path config_file = vocabulary.files_from / "tokenizer_config.json";
  Json config = fs::is_regular_file(config_file) ? read_json_file(config_file) : Json::object();
  Json decoder = Json::object();
  for (const auto& a : vocabulary.added) {
    Json entry = a;
    entry.erase("id");
    decoder[std::to_string(a["id"].get<int64_t>())] = std::move(entry);
  }
  config["added_tokens_decoder"] = std::move(decoder);
  write_text_file(dir / "tokenizer_config.json", config.dump(2) + "\n");
  const fs::path map_file = vocabulary.files_from / "special_tokens_map.json";
  if (fs::is_regular_file(map_file))
    fs::copy_file(map_file, dir / "special_tokens_map.json", fs::copy_options::overwrite_existing);
}

std::vector<std::string> vocabulary_tensors(const CheckpointReader& checkpoint, int64_t vocab_size) {
  std::vector<std::string> names;
  for (const auto& name : checkpoint.names()) {
    const TensorInfo& info = checkpoint.info(name);
    if (embedding_or_head(name) && info.shape.size() == 2 && info.shape[0] == vocab_size) names.push_back(name);
  }
  return names;
}

namespace {

fs::path scratch_target(const fs::path& output, size_t model) {
  const fs::path parent = output.has_parent_path() ? output.parent_path() : fs::path(".");
  std::string name(1, '.');  // appended piecewise: GCC 12 warns falsely on "." + string
  name.append(output.filename().string()).append(".vocab-").append(std::to_string(model));
  return parent / name;
}

std::vector<float> row_f32(const Tensor& t, int64_t row) {
  const int64_t width = t.dim(1);
  const size_t bytes = dtype_size(t.dtype());
  std::vector<float> out(static_cast<size_t>(width));
  convert_to_f32(t.dtype(), t.bytes().data() + static_cast<size_t>(row * width) * bytes, out.data(), out.size());
  return out;
}

}  // namespace

PermutedEmbeddings::PermutedEmbeddings(const OutputVocabulary& vocabulary, const TokenizerSettings& settings,
                                       const std::vector<const CheckpointReader*>& models,
                                       const std::vector<ModelTokens>& tokens,
                                       const std::vector<std::string>& tensor_names,
                                       const std::function<size_t(std::optional<size_t>)>& token_model,
                                       const fs::path& output) {
  const size_t n = models.size();
  std::map<std::string, const TokenEmbedding*> configured;
  for (const auto& [token, e] : settings.tokens) configured[token] = &e;

  // Where each token of the output comes from in a model that lacks it (or in every model,
  // forced): mergekit's assign_embedding_sources.
  struct Plan {
    enum class Kind { Own, Zero, Mean, ModelRow } kind = Kind::Own;
    size_t model = 0;  // ModelRow: whose row
    int64_t row = -1;  // ModelRow: which row of that model's own tensor
    bool force = false;
  };
  std::vector<std::pair<std::string, int64_t>> vocab(vocabulary.ids.begin(), vocabulary.ids.end());
  std::map<int64_t, Plan> plans;  // output id -> plan, for the tokens some model lacks or that are configured
  for (const auto& [token, id] : vocab) {
    std::vector<size_t> have;
    for (size_t m = 0; m < n; ++m)
      if (tokens[m].ids.contains(token)) have.push_back(m);
    Plan p;
    const auto c = configured.find(token);
    if (c != configured.end() && c->second->source != TokenEmbedding::Source::Auto) {
      const TokenEmbedding& e = *c->second;
      p.force = e.force;
      if (e.source == TokenEmbedding::Source::Zero) {
        p.kind = Plan::Kind::Zero;
      } else {
        p.kind = Plan::Kind::ModelRow;
        p.model = token_model(e.candidate);
        const auto& own = tokens[p.model].ids;
        const std::string at = "tokenizer.tokens." + token + ".source";
        if (e.source == TokenEmbedding::Source::Model || e.token) {
          const std::string& wanted = e.token ? *e.token : token;
          const auto it = own.find(wanted);
          if (it == own.end()) throw InputError(at, "token '" + wanted + "' is not in " + e.model + "'s vocabulary");
          p.row = it->second;
        } else {
          p.row = *e.token_id;
          if (p.row >= tokens[p.model].vocab_size)
            throw InputError(at, "token_id " + std::to_string(p.row) + " is past " + e.model + "'s vocabulary");
        }
      }
      plans[id] = p;
      continue;
    }
    if (c != configured.end()) p.force = c->second->force;
    if (have.size() == n && !p.force) continue;  // every model has its own row
    if (have.size() == 1) {
      p.kind = Plan::Kind::ModelRow;
      p.model = have.front();
    } else if (have.empty()) {
      p.kind = Plan::Kind::Zero;
      std::cerr << "amalgam: warning: tokenizer: token '" << token << "' is in no model; its rows are zeros\n";
    } else if (tokens[0].ids.contains(token)) {
      p.kind = Plan::Kind::ModelRow;  // the base's (models[0] is the base when there is one)
      p.model = 0;
    } else {
      p.kind = Plan::Kind::Mean;
    }
    if (p.kind == Plan::Kind::ModelRow && p.row < 0) p.row = tokens[p.model].ids.at(token);
    plans[id] = p;
  }

  std::map<int64_t, const std::string*> token_of;
  for (const auto& [token, id] : vocab) token_of[id] = &token;
  const int64_t used = token_of.empty() ? 0 : token_of.rbegin()->first + 1;

  // One scratch checkpoint per model, its tensors written as they are made: memory holds one
  // model's tensor and its permuted copy, in their stored dtype.
  std::vector<std::unique_ptr<CheckpointWriter>> writers;
  for (size_t m = 0; m < n; ++m) {
    scratch_.push_back(std::make_unique<AtomicOutput>(scratch_target(output, m), false));
    std::vector<TensorSpec> plan;
    for (const std::string& name : tensor_names)
      plan.push_back({name, models[m]->info(name).dtype, {vocabulary.rows, models[0]->info(name).shape.at(1)}});
    writers.push_back(std::make_unique<CheckpointWriter>(scratch_[m]->staging(), plan));
  }
  for (const std::string& name : tensor_names) {
    const int64_t width = models[0]->info(name).shape.at(1);
    for (size_t m = 0; m < n; ++m)
      if (const Shape& shape = models[m]->info(name).shape; shape.size() != 2 || shape[1] != width)
        throw InputError(models[m]->path(), name,
                         "expected [rows, " + std::to_string(width) + "] embeddings, got " + shape_to_string(shape));

    // The planned rows, from each model's tensor read once: a source model's row, the mean
    // (in double, in model order) over the models that have the token, or zeros.
    std::map<int64_t, std::vector<float>> fill;
    std::map<int64_t, std::vector<double>> sums;
    std::map<int64_t, int> counts;
    for (size_t m = 0; m < n; ++m) {
      const Tensor t = models[m]->tensor(name);
      for (const auto& [id, p] : plans) {
        if (p.kind == Plan::Kind::ModelRow && p.model == m) fill[id] = row_f32(t, p.row);
        if (p.kind != Plan::Kind::Mean) continue;
        const auto own = tokens[m].ids.find(*token_of.at(id));
        if (own == tokens[m].ids.end()) continue;
        const std::vector<float> r = row_f32(t, own->second);
        auto& sum = sums[id];
        sum.resize(r.size());
        for (size_t i = 0; i < r.size(); ++i) sum[i] += r[i];
        ++counts[id];
      }
    }
    for (const auto& [id, sum] : sums) {
      std::vector<float> r(sum.size());
      for (size_t i = 0; i < sum.size(); ++i) r[i] = static_cast<float>(sum[i] / counts.at(id));
      fill[id] = std::move(r);
    }
    for (const auto& [id, p] : plans)
      if (p.kind == Plan::Kind::Zero) fill[id] = std::vector<float>(static_cast<size_t>(width), 0.0f);

    for (size_t m = 0; m < n; ++m) {
      const Tensor t = models[m]->tensor(name);
      const DType dtype = t.dtype();
      const size_t row_bytes = static_cast<size_t>(width) * dtype_size(dtype);
      Tensor out = Tensor::zeros(dtype, {vocabulary.rows, width});
      std::byte* dst = out.mutable_bytes().data();
      for (const auto& [id, token] : token_of) {
        const auto own = tokens[m].ids.find(*token);
        const auto plan = plans.find(id);
        const bool forced = plan != plans.end() && plan->second.force;
        std::byte* row = dst + static_cast<size_t>(id) * row_bytes;
        if (own != tokens[m].ids.end() && !forced)
          std::memcpy(row, t.bytes().data() + static_cast<size_t>(own->second) * row_bytes, row_bytes);
        else
          convert_from_f32(fill.at(id).data(), dtype, row, static_cast<size_t>(width));
      }
      // Rows past the vocabulary (pad_to_multiple_of): the mean of the model's rows, as
      // mergekit fills them (Hewitt's vocabulary expansion).
      if (used < vocabulary.rows) {
        std::vector<double> mean(static_cast<size_t>(width), 0.0);
        std::vector<float> r(static_cast<size_t>(width));
        for (int64_t i = 0; i < used; ++i) {
          convert_to_f32(dtype, dst + static_cast<size_t>(i) * row_bytes, r.data(), r.size());
          for (size_t k = 0; k < r.size(); ++k) mean[k] += r[k];
        }
        for (size_t k = 0; k < r.size(); ++k) r[k] = static_cast<float>(mean[k] / static_cast<double>(used));
        for (int64_t i = used; i < vocabulary.rows; ++i)
          convert_from_f32(r.data(), dtype, dst + static_cast<size_t>(i) * row_bytes, r.size());
      }
      writers[m]->write(name, out);
      models[m]->release(name);
    }
  }
  for (size_t m = 0; m < n; ++m) {
    writers[m]->finish();
    readers_.push_back(std::make_unique<CheckpointReader>(scratch_[m]->staging()));
  }
}

}  // namespace amalgam
