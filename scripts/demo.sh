#!/usr/bin/env bash
# Dreams the example photo shipped in examples/ with the classic preset: chelsea-dream.png.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo run --release -- dream examples/chelsea.png -o "${1:-chelsea-dream.png}" --preset classic
