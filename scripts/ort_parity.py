"""ONNX Runtime's Python API and `fashion classify` give the same probabilities, and the
model's garment mask and garment features equal a NumPy computation from its weights and
feature maps.

Lossless PNG copies (256x256, decoded by Pillow) of a few real photos are classified by both:
Python crops the centre (or keeps the whole square, for a model whose second look is the whole
square) and normalises as the model's metadata says, then runs the model with
onnxruntime; `fashion classify --format json --top 1000` prints every label's probability. A
256x256 photo needs no resizing, so both sides see exactly the same pixels.

Usage: ort_parity.py FASHION_BINARY MODEL.onnx PHOTO_FOLDER
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

fashion, model_path, folder = sys.argv[1:4]


sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
meta = json.loads(sess.get_modelmeta().custom_metadata_map["fashion"])
pre = meta["preprocess"]
size = pre["resize_shorter"]
whole = meta.get("test_time_flip", False) and meta.get("second_look", "mirror") != "mirror"
crop = size if whole else pre["crop"]
rng = np.random.default_rng(7)
photos = []
for root, _, files in sorted(os.walk(folder)):
    photos += [os.path.join(root, f) for f in sorted(files) if f.endswith(".jpg")]
picked = [photos[i] for i in rng.choice(len(photos), 8, replace=False)]

with tempfile.TemporaryDirectory() as tmp:
    inputs = []
    pngs = []
    for i, photo in enumerate(picked):
        rgb = np.asarray(Image.open(photo).convert("RGB").resize((size, size)))
        path = os.path.join(tmp, f"{i}.png")
        Image.fromarray(rgb).save(path)
        pngs.append(path)
        off = (size - crop) // 2
        c = rgb[off:off + crop, off:off + crop].astype(np.float32)
        c = (c - np.array(pre["mean"], dtype=np.float32)) / np.array(pre["std"], dtype=np.float32)
        inputs.append(c.transpose(2, 0, 1))
    batch = np.stack(inputs)
    heads = [h["name"] for h in meta["heads"]]
    outs = dict(zip(heads, sess.run(heads, {"input": batch})))
    result = subprocess.run(
        [fashion, "classify", "--format", "json", "--top", "1000", "--model", model_path, *pngs],
        check=True, capture_output=True, text=True,
    )
    preds = json.loads(result.stdout)

worst = 0.0
checked = 0
for i, p in enumerate(preds):
    for h in meta["heads"]:
        if h["name"] not in p:
            continue
        got = {t["label"]: t["confidence"] for t in p[h["name"]]["top"]}
        for j, label in enumerate(h["labels"]):
            worst = max(worst, abs(got[label] - float(outs[h["name"]][i, j])))
            checked += 1
print(f"{checked} probabilities compared, max abs difference {worst:.2e}")


def interp(n_in, n_out):
    """Bilinear, half-pixel centres, edges clamped (what the mask head's upsampling means)."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for o in range(n_out):
        x = min(max((o + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
        i0 = int(np.floor(x))
        i1 = min(i0 + 1, n_in - 1)
        m[o, i0] += 1 - (x - i0)
        m[o, i1] += x - i0
    return m


model = onnx.load(model_path)
names = [o.name for o in model.graph.output]
if "garment_mask" in names:
    # Expose the backbone maps the mask reads and recompute the head in NumPy. A model with a
    # test-time flip runs them on both looks (`flip/pair/` holds both looks of a graph output);
    # with the mirrored crop as its second look it averages the two masks, the mirrored one
    # mirrored back.
    # The maps are the tensors the mask's convolutions read: in an int8 model, the dequantised
    # copies of the backbone's outputs.
    flip = meta.get("test_time_flip", False)
    reads = {n.name: n.input[0] for n in model.graph.node}
    maps = [reads[f"mask.{m}"] for m in ["feat_s8", "feat_s16", "feat_s32"]]
    for n in maps:
        if n not in names:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    init = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    s2 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    f8, f16, f32, got = s2.run(maps + ["garment_mask"], {"input": batch})
    if flip:
        assert len(f8) == 2 * len(batch), "a flipped model runs both looks in one batch"
    hidden = init["mask.b"][None, :, None, None]
    for f, name in zip([f8, f16, f32], ["feat_s8", "feat_s16", "feat_s32"]):
        w = init[f"mask.w_{name}"][:, :, 0, 0]
        a = np.einsum("hc,ncyx->nhyx", w, f.astype(np.float64))
        u = interp(a.shape[-1], 28)
        hidden = hidden + np.einsum("Yy,nhyx,Xx->nhYX", u, a, u)
    hidden = np.maximum(hidden, 0)
    logits = np.einsum("h,nhyx->nyx", init["mask.w_out"][0, :, 0, 0], hidden) + init["mask.b_out"][0]
    want = 1 / (1 + np.exp(-logits))
    n = len(batch)
    # Each look's own mask: the garment features of each look are weighted by it.
    own = want
    if flip and whole:
        # A whole second look's mask covers the whole square: the mask is the crop's own.
        want = want[:n]
    elif flip:
        want = (want[:n] + want[n:, :, ::-1]) / 2
    mask_worst = float(np.abs(got[:, 0] - want).max())
    print(f"garment mask: {want.size} cells compared, max abs difference {mask_worst:.2e}")
    worst = max(worst, mask_worst)
    checked += want.size
    if "garment_features" in names:
        # Each channel of feat_s8 and feat_s16 averaged over the cells, weighted by the mask
        # (on the 14x14 map: the mean of each 2x2 block of the mask).
        # With the flip, the mean of both looks' features, as the heads' answers.
        own16 = own.reshape(len(own), 14, 2, 14, 2).mean(axis=(2, 4))
        parts = []
        for f, m in [(f8, own), (f16, own16)]:
            area = m.mean(axis=(1, 2))
            weighted = np.einsum("ncyx,nyx->nc", f.astype(np.float64), m) / (m.shape[1] * m.shape[2])
            parts.append(weighted / (area[:, None] + 1e-6))
        want_gf = np.concatenate(parts, axis=1)
        if flip:
            want_gf = (want_gf[:n] + want_gf[n:]) / 2
        (gf,) = sess.run(["garment_features"], {"input": batch})
        feat_worst = float(np.abs(gf - want_gf).max())
        print(f"garment features: {gf.size} values compared, max abs difference {feat_worst:.2e}")
        worst = max(worst, feat_worst)
        checked += gf.size
if checked == 0 or worst > 1e-4:
    print("ort parity: 0 passed, 1 failed")
    sys.exit(1)
print("ort parity: 1 passed, 0 failed")
