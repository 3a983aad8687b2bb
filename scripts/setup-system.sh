#!/usr/bin/env bash
# System packages tfyarn's build and tests need (Debian bookworm). Idempotent: installs
# only what is missing, so a second run is quick. Run as root (CI is root).
set -euo pipefail
# What a bare Debian (debootstrap minbase + make; `make bare-install` checks it) lacks:
# Python with venv and headers, a C compiler and pkg-config for the extension, procps
# (ps) and lz4 (apt's compressed lists, DebDesc-20) for the tests.
pkgs=(python3 python3-venv python3-dev gcc libc6-dev pkg-config ca-certificates procps lz4)
pkgs+=(libucx-dev ucx-utils python3-pyverbs rdma-core ibverbs-providers iproute2 openjdk-17-jre-headless maven
      openmpi-bin python3-mpi4py python3-numpy)  # the last three: Open MPI baseline of `tfyarn bench exchange`
pkgs+=(libopenblas0-pthread)  # native BLAS for Spark MLlib (baseline of `tfyarn bench reproduce`)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-system: installing ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "setup-system: need root to apt-get install ${missing[*]}" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# DebDesc-20 (`tfyarn data debdesc`, its tests) is built from bookworm main's English
# package descriptions, which Debian container images do not fetch (Acquire::Languages).
if ! compgen -G "/var/lib/apt/lists/*_dists_bookworm_main_i18n_Translation-en*" >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup-system: no English package descriptions; as root: apt-get update -o Acquire::Languages=en" >&2
  else
    echo "setup-system: fetching English package descriptions (for DebDesc-20)"
    apt-get update -qq -o Acquire::Languages=en
  fi
fi
