#!/usr/bin/env bash
# Fetches the pinned ONNX Runtime shared library from the official `onnxruntime` wheel on PyPI
# and unpacks it to vendor/onnxruntime/libonnxruntime.so (where `fashion` looks for it).
set -euo pipefail
VERSION=1.32.0
WHEEL=onnxruntime-${VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
SHA256=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/vendor/onnxruntime"
if [ -f "$dest/libonnxruntime.so" ] && [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 "onnxruntime==${VERSION}" -d "$tmp"
echo "$SHA256  $tmp/$WHEEL" | sha256sum -c --quiet -
python3 - "$tmp/$WHEEL" "$tmp" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("onnxruntime/capi/libonnxruntime.so.1.32.0", sys.argv[2])
PY
mkdir -p "$dest"
mv "$tmp/onnxruntime/capi/libonnxruntime.so.${VERSION}" "$dest/libonnxruntime.so"
echo "$VERSION" > "$dest/VERSION"
echo "ONNX Runtime $VERSION installed in $dest"
