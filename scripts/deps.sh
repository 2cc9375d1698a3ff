#!/usr/bin/env bash
# Installs the Debian packages dtest needs to build, test and benchmark.
# Skips apt entirely when everything is already installed.
set -euo pipefail
pkgs=(
  build-essential cmake ninja-build pkg-config
  libboost1.81-dev nlohmann-json3-dev libzstd-dev libxxhash-dev
  libcli11-dev libfmt-dev libgtest-dev libgmock-dev googletest libssl-dev libsqlite3-dev
  libtomlplusplus-dev libpugixml-dev
  python3 python3-pytest python3-pytest-cov
  openssh-server openssh-client libssh-dev iproute2
)
if [[ "${1:-}" == "--bench" ]]; then pkgs+=(hyperfine python3-pytest python3-pytest-xdist rsync); fi
missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then exit 0; fi
echo "deps: installing ${missing[*]}" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
