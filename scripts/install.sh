#!/usr/bin/env bash
# Installs lift-dist and its stack into the current Python environment.
# Idempotent: a stamp keyed on the dependency files makes a repeat run take a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch / torchvision / TorchCodec versions come from pyproject's `pinned` extra (one source of truth);
# they are installed only where no torch is installed, so users keep their own CUDA build. TorchCodec
# decodes the training JPEGs (lift_dist falls back to torchvision's decoder without it).
pins() {
  $PY - "$1" <<'PYTHON'
import re, sys
text = open("pyproject.toml").read()
pinned = re.search(r'^pinned = \[(.*?)\]', text, re.M | re.S).group(1)
print(" ".join(p for p in re.findall(r'"([^"]+)"', pinned) if p.split("==")[0] in sys.argv[1].split(",")))
PYTHON
}
key=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)-$(pwd | sha256sum | cut -c1-8)
stamp="$($PY -c 'import sys; print(sys.prefix)')/.lift-dist-install-$key"
have_all='import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("lift_dist", "torch", "torchvision", "open_clip", "deepspeed", "webdataset", "ray", "submitit", "pyarrow", "pydantic", "ijson", "jinja2", "sklearn", "onnx", "onnxruntime", "pytest_timeout", "ruff")))'
if [ -f "$stamp" ] && $PY -c "$have_all" 2>/dev/null; then
  exit 0
fi
if ! $PY -c "import torch, torchvision" 2>/dev/null; then
  $PY -m pip install -q --disable-pip-version-check $(pins torch,torchvision)
fi
if ! $PY -c "import torchcodec.decoders" 2>/dev/null; then
  $PY -m pip install -q --disable-pip-version-check --no-deps $(pins torchcodec) \
    || echo "install.sh: $(pins torchcodec) did not install; lift_dist uses torchvision's JPEG decoder" >&2
fi
$PY -m pip install -q --disable-pip-version-check -e ".[dev]"
rm -f "$($PY -c 'import sys; print(sys.prefix)')"/.lift-dist-install-* 2>/dev/null || true
touch "$stamp"
