#include "merge/chat_template.h"

#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_file.h"

namespace amalgam {

namespace fs = std::filesystem;

namespace {

// The conversation formats mergekit names, written for amalgam: each renders `messages`
// ({role, content}) and, with add_generation_prompt, the opening of the assistant's turn.
const std::map<std::string, std::string>& named_templates() {
  static const std::map<std::string, std::string> templates = {
      {"alpaca",
       "{%- set system = messages | selectattr('role', 'equalto', 'system') | list -%}"
       "{%- if system %}{{ (system | last).content | trim + '\\n\\n' }}{% endif -%}"
       "{%- for m in messages if m.role != 'system' -%}"
       "{%- if m.role == 'user' %}{{ '### Instruction:\\n' }}{% elif m.role == 'user_context' %}"
       "{{ '### Input:\\n' }}{% elif m.role == 'assistant' %}{{ '### Response:\\n' }}{% endif -%}"
       "{{ m.content | trim }}{{ '' if loop.last else '\\n\\n' }}"
       "{%- endfor -%}"
       "{%- if add_generation_prompt and messages[-1].role != 'assistant' %}{{ '\\n\\n### Response:\\n' }}"
       "{% endif -%}"},
      {"chatml",
       "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor -%}"
       "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif -%}"},
      {"exaone",
       "{%- for m in messages -%}"
       "{%- if loop.first and m.role != 'system' %}{{ '[|system|][|endofturn|]\\n' }}{% endif -%}"
       "{{ '[|' + m.role + '|]' + m.content }}{{ '\\n' if m.role == 'user' else '[|endofturn|]\\n' }}"
       "{%- endfor -%}"
       "{%- if add_generation_prompt %}{{ '[|assistant|]' }}{% endif -%}"},
      {"llama3",
       "{{- bos_token -}}"
       "{%- for m in messages -%}"
       "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + (m.content | trim) + '<|eot_id|>' }}"
       "{%- endfor -%}"
       "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif -%}"},
      {"mistral",
       "{%- set rest = messages[1:] if messages[0].role == 'system' else messages -%}"
       "{{- bos_token -}}"
       "{%- for m in rest -%}"
       "{%- if (m.role == 'user') != (loop.index0 % 2 == 0) -%}"
       "{{- raise_exception('After an optional system message, roles must alternate user/assistant') -}}"
       "{%- endif -%}"
       "{%- if m.role == 'user' and loop.first and messages[0].role == 'system' -%}"
       "{{ ' [INST] ' + messages[0].content + '\\n\\n' + m.content + ' [/INST]' }}"
       "{%- elif m.role == 'user' %}{{ ' [INST] ' + m.content + ' [/INST]' }}"
       "{%- elif m.role == 'assistant' %}{{ ' ' + m.content + eos_token }}"
       "{%- else %}{{- raise_exception('Only user and assistant roles follow the optional system message') }}"
       "{%- endif -%}"
       "{%- endfor -%}"},
  };
  return templates;
}

std::string trimmed(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

// A model's chat template from its tokenizer_config.json, trimmed, or "".
std::string model_template(const fs::path& dir) {
  const fs::path file = dir / "tokenizer_config.json";
  if (!fs::is_regular_file(file)) return "";
  const nlohmann::json j = read_json_file(file);
  if (!j.is_object() || !j.contains("chat_template")) return "";
  const auto& t = j["chat_template"];
  if (t.is_string()) return trimmed(t.get<std::string>());
  if (t.is_array())  // transformers' named templates: [{"name": ..., "template": ...}]
    for (const auto& entry : t)
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string())
        return trimmed(entry["template"].get<std::string>());
  return "";
}

}  // namespace

bool is_chat_template_choice(const std::string& choice) {
  return choice == "auto" || named_templates().contains(choice) ||
         (choice.size() >= 20 && choice.find('{') != std::string::npos);
}

std::string chat_template_names() {
  std::string names;
  for (const auto& [name, text] : named_templates()) names += (names.empty() ? "" : ", ") + name;
  return names;
}

std::optional<std::string> resolve_chat_template(const std::string& choice, const std::vector<fs::path>& models) {
  if (const auto it = named_templates().find(choice); it != named_templates().end()) return it->second;
  if (choice != "auto") return choice;
  std::vector<std::pair<std::string, int>> counts;  // in the order first seen
  for (const auto& dir : models) {
    const std::string t = model_template(dir);
    if (t.empty()) continue;
    auto it = std::find_if(counts.begin(), counts.end(), [&](const auto& c) { return c.first == t; });
    if (it == counts.end())
      counts.emplace_back(t, 1);
    else
      ++it->second;
  }
  if (counts.empty()) return std::nullopt;
  return std::max_element(counts.begin(), counts.end(),
                          [](const auto& a, const auto& b) { return a.second < b.second; })
      ->first;
}

bool write_chat_template(const fs::path& dir, const std::string& chat_template) {
  const fs::path file = dir / "tokenizer_config.json";
  if (!fs::is_regular_file(file)) return false;
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(read_text_file(file), nullptr, false);
  if (!j.is_object()) throw InputError(file, "not a JSON object: the chat template cannot be set in it");
  j["chat_template"] = chat_template;
  fs::remove(file);  // a copied file may be a hard link or read-only: write a fresh one
  write_text_file(file, j.dump(2) + "\n");
  return true;
}

}  // namespace amalgam
