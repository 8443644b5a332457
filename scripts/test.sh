#!/usr/bin/env bash
# The project's test command: installs what the build needs, then runs every test.
# Tests that read ../shared (PyTorch references, media) skip with a reason when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --locked "$@"
