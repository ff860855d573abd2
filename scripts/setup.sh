#!/usr/bin/env bash
# Set up dsnet on a fresh machine: the package with its test tools, and Fashion-MNIST for offline use.
set -euo pipefail
cd "$(dirname "$0")/.."

# The exact package versions the tests pass with (constraints.txt); pyproject.toml itself gives ranges.
python -m pip install -e ".[dev]" -c constraints.txt

# Fashion-MNIST, the offline default data set, ships as a Debian package. Without it (no apt, not
# root) dsnet downloads the files with torchvision on first use instead.
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
    $SUDO apt-get install -y dataset-fashion-mnist \
        || { $SUDO apt-get update && $SUDO apt-get install -y dataset-fashion-mnist; } \
        || echo "setup: could not install dataset-fashion-mnist; Fashion-MNIST will be downloaded on first use" >&2
fi
