#include "text/tokenizer.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/utf8.h"
#include "io/json_file.h"
#include "text/unicode.h"

namespace amalgam::text {

namespace {

// A special token named in tokenizer_config.json: a string or an AddedToken object.
std::optional<std::string> config_token(const nlohmann::json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const auto& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

struct Template {
  std::vector<TokenId> prefix, suffix;
};

// The ids a post-processor puts around a single sequence.
Template template_of(const nlohmann::json& processor, const std::filesystem::path& file) {
  if (processor.is_null()) return {};
  const std::string type = processor.value("type", "");
  if (type == "ByteLevel") return {};  // changes offsets only
  if (type == "Sequence") {
    // Each processor wraps what the ones before it produced.
    Template t;
    for (const auto& step : processor.value("processors", nlohmann::json::array())) {
      auto inner = template_of(step, file);
      t.prefix.insert(t.prefix.begin(), inner.prefix.begin(), inner.prefix.end());
      t.suffix.insert(t.suffix.end(), inner.suffix.begin(), inner.suffix.end());
    }
    return t;
  }
  if (type == "TemplateProcessing") {
    Template t;
    bool after_sequence = false;
    for (const auto& item : processor.value("single", nlohmann::json::array())) {
      if (item.contains("Sequence")) {
        after_sequence = true;
        continue;
      }
      if (!item.contains("SpecialToken"))
        throw InputError(file,
                         "post_processor TemplateProcessing: an item of 'single' is neither Sequence nor SpecialToken");
      const auto name = item["SpecialToken"].value("id", "");
      const auto& specials = processor.value("special_tokens", nlohmann::json::object());
      if (!specials.contains(name))
        throw InputError(file,
                         "post_processor TemplateProcessing: special token '" + name + "' is not in special_tokens");
      for (const auto& id : specials[name].value("ids", nlohmann::json::array()))
        (after_sequence ? t.suffix : t.prefix).push_back(id.get<TokenId>());
    }
    return t;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    const auto& cls = processor.at("cls");
    const auto& sep = processor.at("sep");
    return {{cls.at(1).get<TokenId>()}, {sep.at(1).get<TokenId>()}};
  }
  throw InputError(file, "post_processor type '" + type + "' is not supported");
}

}  // namespace

Tokenizer Tokenizer::load(const std::filesystem::path& dir) {
  try {
    return load_checked(dir);
  } catch (const nlohmann::json::exception& e) {
    // A value of the wrong type or a missing key somewhere in the two files.
    throw InputError(dir / "tokenizer.json", std::string("malformed: ") + e.what());
  }
}

Tokenizer Tokenizer::load_checked(const std::filesystem::path& dir) {
  const auto file = dir / "tokenizer.json";
  if (!std::filesystem::exists(file)) throw InputError(file, "not found: the model directory has no tokenizer.json");
  const auto json = read_json_file(file);
  const auto config_file = dir / "tokenizer_config.json";
  const auto config = std::filesystem::exists(config_file) ? read_json_file(config_file) : nlohmann::json::object();
  if (!json.contains("model") || !json["model"].is_object()) throw InputError(file, "no 'model' object");

  Tokenizer t{BpeModel(json["model"], file)};
  t.normalize_ = make_normalizer(json.value("normalizer", nlohmann::json()), file);
  t.pre_tokenize_ = make_pre_tokenizer(json.value("pre_tokenizer", nlohmann::json()), file);

  for (const auto& a : json.value("added_tokens", nlohmann::json::array())) {
    AddedToken token{a.at("content").get<std::string>(), a.at("id").get<TokenId>(), a.value("lstrip", false),
                     a.value("rstrip", false)};
    if (token.content.empty()) continue;
    if (token.id < 0 || token.id > kMaxTokenId)
      throw InputError(file,
                       "added token '" + token.content + "': id " + std::to_string(token.id) + " is out of range");
    t.model_.add_token(token.content, token.id);
    t.added_.push_back(std::move(token));
  }
  std::stable_sort(t.added_.begin(), t.added_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });

  if (const auto bos = config_token(config, "bos_token")) t.bos_ = t.model_.find(*bos);
  if (const auto eos = config_token(config, "eos_token")) t.eos_ = t.model_.find(*eos);
  const auto [prefix, suffix] = template_of(json.value("post_processor", nlohmann::json()), file);
  t.prefix_ = prefix;
  t.suffix_ = suffix;
  // tokenizer_config.json's add_bos_token / add_eos_token, where given, decide whether BOS
  // and EOS wrap the sequence: transformers' Llama and Gemma tokenizers rebuild their
  // template from them, so a Mistral or Llama 2 config that says add_eos_token gets it.
  auto apply_flag = [&](const char* key, const std::optional<TokenId>& token, std::vector<TokenId>& side, bool front) {
    if (!config.contains(key) || !config[key].is_boolean() || !token) return;
    const bool wanted = config[key].get<bool>();
    const bool present = !side.empty() && (front ? side.front() : side.back()) == *token;
    if (wanted && !present) side.insert(front ? side.begin() : side.end(), *token);
    if (!wanted && present) side.erase(front ? side.begin() : side.end() - 1);
  };
  apply_flag("add_bos_token", t.bos_, t.prefix_, true);
  apply_flag("add_eos_token", t.eos_, t.suffix_, false);
  return t;
}

std::vector<Tokenizer::Section> Tokenizer::split_at_added_tokens(std::string_view text) const {
  std::vector<Section> sections;
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    const AddedToken* found = nullptr;
    for (const auto& a : added_)  // longest first
      if (text.compare(i, a.content.size(), a.content) == 0) {
        found = &a;
        break;
      }
    if (!found) {
      ++i;
      continue;
    }
    if (i > start) sections.push_back({std::string(text.substr(start, i - start)), std::nullopt});
    sections.push_back({found->content, found->id});
    i += found->content.size();
    start = i;
  }
  if (start < text.size()) sections.push_back({std::string(text.substr(start)), std::nullopt});

  // lstrip / rstrip: an added token takes the whitespace on that side with it.
  for (size_t k = 0; k < sections.size(); ++k) {
    if (!sections[k].added) continue;
    const auto& a =
        *std::find_if(added_.begin(), added_.end(), [&](const AddedToken& t) { return t.content == sections[k].text; });
    if (a.lstrip && k > 0 && !sections[k - 1].added)
      sections[k - 1].text = std::string(strip_whitespace(sections[k - 1].text, false, true));
    if (a.rstrip && k + 1 < sections.size() && !sections[k + 1].added)
      sections[k + 1].text = std::string(strip_whitespace(sections[k + 1].text, true, false));
  }
  return sections;
}

std::vector<TokenId> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (const auto bad = first_invalid_utf8(text); bad != std::string_view::npos)
    throw InputError("text is not UTF-8 at byte " + std::to_string(bad));
  std::vector<TokenId> ids;
  if (add_special_tokens) ids = prefix_;
  const auto sections = split_at_added_tokens(text);
  for (size_t k = 0; k < sections.size(); ++k) {
    if (sections[k].added) {
      ids.push_back(*sections[k].added);
      continue;
    }
    if (sections[k].text.empty()) continue;
    auto normalized = normalize_(sections[k].text);
    if (normalized.empty()) continue;
    for (const auto& word : pre_tokenize_(std::move(normalized), k == 0)) model_.encode_word(word, ids);
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  return ids;
}

std::vector<std::string> Tokenizer::tokens(const std::vector<TokenId>& ids) const {
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (const auto id : ids) out.push_back(model_.token(id));
  return out;
}

}  // namespace amalgam::text
