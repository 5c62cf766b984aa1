#!/usr/bin/env bash
# Installs everything ukd needs on a fresh machine: torch (CPU wheel unless one is installed), ukd itself with
# its C++ extension built against that torch, and Debian's Fashion-MNIST package when possible.
#   bash scripts/install.sh          # to run ukd (no Triton: the CPU path does not use it)
#   bash scripts/install.sh --test   # also the test tools and Triton (its kernels are tested in the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
case "${1:-}" in
    "") ;;
    --test) extras="[test]" ;;
    *) echo "scripts/install.sh: error: unknown option ${1} (expected nothing or --test)" >&2; exit 2 ;;
esac

if ! python -c "import torch" 2>/dev/null; then
    python -m pip install "${UKD_TORCH_SPEC:-torch==2.13.0}"
fi
python -m pip install setuptools wheel ninja
python -m pip install --no-build-isolation -e ".${extras}"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) ||
            echo "install.sh: dataset-fashion-mnist could not be installed; ukd falls back to its embedded subset"
    else
        echo "install.sh: not root or no apt-get: ukd uses its embedded Fashion-MNIST subset"
    fi
fi
python -c "import ukd, ukd.op.backends as b; print('ukd', ukd.__version__, 'installed; cpu backend:', b.resolve('auto', __import__('torch').device('cpu')))"
