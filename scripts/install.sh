#!/usr/bin/env bash
# Installs lift-dist and its stack into the current Python environment.
# Idempotent: a stamp keyed on the dependency files makes a repeat run take a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch/torchvision are pinned here (not in pyproject) so users keep their own CUDA build;
# these two versions install from local disk on the project's machines.
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
# TorchCodec decodes the training JPEGs (lift_dist falls back to torchvision's deprecated decoder
# without it); its builds follow torch's, hence pinned beside it.
CODEC_PIN="torchcodec==0.16.0"
key=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)-$(pwd | sha256sum | cut -c1-8)
stamp="$($PY -c 'import sys; print(sys.prefix)')/.lift-dist-install-$key"
have_all='import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("lift_dist", "torch", "torchvision", "open_clip", "deepspeed", "webdataset", "ray", "submitit", "pyarrow", "pytest_timeout")))'
if [ -f "$stamp" ] && $PY -c "$have_all" 2>/dev/null; then
  exit 0
fi
if ! $PY -c "import torch, torchvision" 2>/dev/null; then
  $PY -m pip install -q --disable-pip-version-check $TORCH_PINS
fi
if ! $PY -c "import torchcodec.decoders" 2>/dev/null; then
  $PY -m pip install -q --disable-pip-version-check --no-deps $CODEC_PIN \
    || echo "install.sh: $CODEC_PIN did not install; lift_dist uses torchvision's JPEG decoder" >&2
fi
$PY -m pip install -q --disable-pip-version-check -e ".[dev]"
rm -f "$($PY -c 'import sys; print(sys.prefix)')"/.lift-dist-install-* 2>/dev/null || true
touch "$stamp"
