#!/usr/bin/env bash
# Real-data gates: golden backbone parity, accuracy floors of the built-in model on the
# validation splits, its int8 variant within one point of it, and ONNX Runtime's Python API
# agreeing with `fashion classify` on both.
# Usage: scripts/gates.sh DATA_DIR WEIGHTS_DIR
set -euo pipefail
data=${1:?data folder}
weights=${2:?weights folder}
for need in "$data/inshop/Anno/list_eval_partition.txt" "$data/fpi/styles.csv" "$weights/reference.safetensors"; do
  if [ ! -e "$need" ]; then
    echo "gates: $need is missing: the real-data gates need the shared data and weights" >&2
    exit 1
  fi
done
weights=$(cd "$weights" && pwd)
fashion=target/release/fashion
out=reports
mkdir -p "$out"

echo "== golden parity with PyTorch (backbone and built-in model)"
# In the test profile and for the whole workspace, as `make test` builds it, so that most of
# that build is reused (a release build of the tests compiles the library and its dependencies a
# third time; `-p fashion` alone resolves the dependencies' features otherwise). The numbers
# compared are computed by ONNX Runtime and by code that optimisation does not change (no
# fast-math in Rust).
FASHION_WEIGHTS="$weights" cargo test --workspace --locked --test parity -- --ignored

echo "== In-shop val"
$fashion eval --data "$data/inshop" --layout inshop --split val --json "$out/inshop-val.json"
echo "== Fashion Product Images val, apparel"
$fashion eval --data "$data/fpi" --layout fpi --split val --only master_category=Apparel --json "$out/fpi-val-apparel.json"

echo "== In-shop val as model shots that are not square (padding bands cut off)"
rm -rf "$out/inshop-unpadded"
.venv/bin/python scripts/unpad_inshop.py "$data/inshop" "$out/inshop-unpadded"
$fashion eval --data "$out/inshop-unpadded" --layout inshop --split val --json "$out/inshop-val-unpadded.json"

echo "== primary colour of full-resolution photos against their 224x224 catalogue copies"
rm -f "$out/fullres.jsonl" "$out/fullres-copies.jsonl"
$fashion classify "$data/fullres/images" --format jsonl --out "$out/fullres.jsonl"
awk -F, -v d="$data/fpi" 'NR > 1 { print d "/images/" $2 ".jpg" }' "$data/fullres/manifest.csv" \
  | $fashion classify - --format jsonl --out "$out/fullres-copies.jsonl"
.venv/bin/python scripts/colour_consistency.py "$data/fullres/manifest.csv" \
  "$out/fullres.jsonl" "$out/fullres-copies.jsonl" "$out/fullres-colour.json"

echo "== accuracy floors"
.venv/bin/python scripts/check_floors.py "$out/inshop-val.json" "$out/fpi-val-apparel.json" \
  "$out/fullres-colour.json" "$out/inshop-val-unpadded.json"

echo "== int8 variant: within one point of the built-in model on every head"
int8=models/default-int8.onnx
$fashion eval --model "$int8" --data "$data/inshop" --layout inshop --split val --json "$out/int8-inshop-val.json"
$fashion eval --model "$int8" --data "$data/fpi" --layout fpi --split val --only master_category=Apparel --json "$out/int8-fpi-val-apparel.json"
.venv/bin/python scripts/check_variant.py int8 "$out/inshop-val.json" "$out/fpi-val-apparel.json" \
  "$out/int8-inshop-val.json" "$out/int8-fpi-val-apparel.json"

echo "== ONNX Runtime (Python) gives the same probabilities as fashion classify"
for model in models/default.onnx "$int8"; do
  .venv/bin/python scripts/ort_parity.py "$fashion" "$model" "$data/inshop/img"
done

echo "== web page in headless Chromium: two real photos, names as fashion classify gives them"
inshop_photo=$(find "$data/inshop/img" -name '*.jpg' | sort | awk 'NR == 1')
fpi_photo=$(find "$data/fpi/images" -name '*.jpg' | sort | awk 'NR == 1')
node e2e/page.mjs "$fashion" "$out/page.png" "$inshop_photo" "$fpi_photo"

echo "== server under load (short run; the full one is in the README)"
cargo build --release --locked -p fashion-cli --example load
target/release/examples/load "$fashion" "$data/fpi/images" 20 64 200
