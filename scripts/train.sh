#!/usr/bin/env bash
# The main job: installs what is missing, builds, and trains the default model
# (LeNet-5) on the built-in default dataset (Fashion-MNIST from Debian's
# dataset-fashion-mnist). Arguments go to `hpdl train` (e.g. --set train.epochs=2).
# Running it again starts the demo run over (train.overwrite); a run of your
# own is kept unless you ask for that (docs/files.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[[ -x build/bin/hpdl ]] || scripts/build.sh
exec build/bin/hpdl train examples/fashion_mnist/lenet5.toml --set train.overwrite=true "$@"
