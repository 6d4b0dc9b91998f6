#!/usr/bin/env bash
# Idempotent set-up of everything rmt-dist needs on a Debian/Ubuntu machine:
# system libraries for FFCV, uv, and the locked Python environment in .venv.
#   bash launch/setup.sh            # environment only
#   bash launch/setup.sh --slurm    # also a local 2-node SLURM for the tests (root only)
# Safe to re-run: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

want_slurm=0
for arg in "$@"; do
  case "$arg" in
    --slurm) want_slurm=1 ;;
    *) echo "setup.sh: unknown option '$arg' (valid: --slurm)" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; fi
fi

pkgs=(pkg-config libopencv-dev libturbojpeg0-dev)
[ "$want_slurm" -eq 1 ] && pkgs+=(slurm-wlm munge)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
    echo "setup.sh: need root or sudo to apt-get install ${missing[*]}" >&2; exit 1
  fi
  echo "setup: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v uv >/dev/null; then
  echo "setup: installing uv"
  python3 -m pip install -q uv 2>/dev/null || python3 -m pip install -q --user uv
  export PATH="$HOME/.local/bin:$PATH"
fi

# uv resolves the standard torch/torchvision wheels (CUDA builds, which also run on CPU)
# from the committed lock, ignoring any pip configuration that would pick CPU-only torch.
uv sync --frozen --extra dev --quiet

if [ "$want_slurm" -eq 1 ]; then
  bash launch/slurm_local.sh
fi
