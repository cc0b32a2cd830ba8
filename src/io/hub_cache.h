// Models named as Hugging Face names them ("org/name", "org/name@revision"), found in the
// local Hugging Face hub cache, the layout huggingface_hub's snapshot_download leaves:
//
//   <cache>/models--org--name/refs/main            the commit hash "main" points at
//   <cache>/models--org--name/snapshots/<commit>/  the files of that commit
//
// amalgam never downloads: a model that is not in the cache is the caller's input error,
// which names the directories looked in (hub_cache_dirs).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace amalgam {

// Where the cache may be, in the order looked in: $HF_HUB_CACHE, $HF_HOME/hub, and
// ~/.cache/huggingface/hub (huggingface_hub's default), each where its variable is set.
std::vector<std::filesystem::path> hub_cache_dirs();

// Whether `name` has the shape of a hub id: "name" or "org/name", each part letters, digits,
// '-', '_' and '.', optionally "@revision".
bool looks_like_hub_id(const std::string& name);

// The snapshot directory of `id` in the first cache that holds it: the revision (default
// "main") read from refs/<revision> when that file exists, else taken as a commit hash.
// nullopt when `id` is not an id or no cache holds that revision.
std::optional<std::filesystem::path> find_in_hub_cache(const std::string& id);

}  // namespace amalgam
