#!/usr/bin/env bash
# Installs everything ukd needs on a fresh machine: torch (CPU wheel unless one is installed), ukd itself with
# its C++ extension built against that torch, the test tools, and Debian's Fashion-MNIST package when possible.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python -c "import torch" 2>/dev/null; then
    python -m pip install "${UKD_TORCH_SPEC:-torch==2.13.0}"
fi
python -m pip install setuptools wheel ninja
python -m pip install --no-build-isolation -e ".[test]"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) ||
            echo "install.sh: dataset-fashion-mnist could not be installed; ukd falls back to its embedded subset"
    else
        echo "install.sh: not root or no apt-get: ukd uses its embedded Fashion-MNIST subset"
    fi
fi
python -c "import ukd, ukd.op.backends as b; print('ukd', ukd.__version__, 'installed; cpu backend:', b.resolve('auto', __import__('torch').device('cpu')))"
