// mergekit's `chat_template`: the output's tokenizer_config.json gets the template named
// ("alpaca", "chatml", "exaone", "llama3", "mistral": amalgam's own renderings of those
// formats), the plurality template of the merged models ("auto"; none when no model has
// one), or the Jinja text given (at least 20 characters with a '{', as mergekit checks).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace amalgam {

// Whether `choice` is "auto", a name, or plausibly a Jinja template.
bool is_chat_template_choice(const std::string& choice);
// "alpaca, chatml, exaone, llama3, mistral".
std::string chat_template_names();

// The template text for `choice`, or nullopt ("auto" and no model directory has one).
// `models` are the merge's checkpoint directories, base first, for "auto": each's
// tokenizer_config.json chat_template (a string, or a list's "default" entry), trimmed; ties
// go to the template seen first.
std::optional<std::string> resolve_chat_template(const std::string& choice,
                                                 const std::vector<std::filesystem::path>& models);

// Sets "chat_template" in `dir`/tokenizer_config.json; false (nothing written) when the
// directory has none (no tokenizer to attach it to).
bool write_chat_template(const std::filesystem::path& dir, const std::string& chat_template);

}  // namespace amalgam
