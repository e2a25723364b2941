#!/usr/bin/env bash
# Installs the Debian 12 packages Refinery builds with (DESIGN §8), skipping those already present.
# Run as root (or with sudo). The CUDA toolkit is optional: with nvcc in /usr/local/cuda or on PATH the
# CUDA backend is built too.
set -euo pipefail

packages=(build-essential cmake ninja-build pkg-config ccache git
          libeigen3-dev libhdf5-dev libcli11-dev nlohmann-json3-dev
          libgtest-dev libgmock-dev libpcre2-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
