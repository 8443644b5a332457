#!/usr/bin/env bash
# The project's test command: installs what the build and the farm tests need, then runs every
# test: cargo's, then the render-farm engine tests (tests/farm/).
# Tests that read ../shared (PyTorch references, media) skip with a reason when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --farm
cargo test --locked "$@"
# The render-farm recipes on real engines: a one-node Slurm cluster, and GNU parallel with a
# chunk killed and run again.
cargo build --locked --quiet
DEEPDREAM=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/deepdream
export DEEPDREAM
tests/farm/slurm.sh
tests/farm/parallel.sh
