"""Reference pipeline for `fashion bench --reference`: the plain Python way to tag a folder of photos.

Pillow decodes each photo, brings it to a square as the model's `fit` says (`crop`: shorter side
resized; `squash`: both sides resized; `pad`: longer side resized, padded with the mean colour
of the edges along it; bilinear, antialiased) and cuts the centre square the model takes (the
crop, or the whole square for a model whose second look is the whole square); NumPy normalises;
ONNX Runtime runs the same model file on batches; each photo's best label per head is written as
one JSON line. One process, photos decoded one after the other while the model waits, as a
typical script does. It computes no colour palette, so it does less work than `fashion classify`.

Usage: reference.py MODEL.onnx OUT.jsonl THREADS BATCH PHOTO...
Prints one JSON object: {"photos": N, "seconds": S, "photos_per_s": R}.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image


def fit_square(img, fit, size):
    """Resizes an RGB photo for the centre crop, as `fashion`'s Preprocess::resize_and_crop."""
    w, h = img.size
    if fit == "squash":
        return img.resize((size, size), Image.BILINEAR)
    if fit == "pad":
        scale = size / max(w, h)
        # Half away from zero, as Rust's f64::round (Python's round() rounds half to even).
        nw, nh = (min(size, max(1, int(v * scale + 0.5))) for v in (w, h))
        img = img.resize((nw, nh), Image.BILINEAR)
        a = np.asarray(img)
        edges = np.concatenate([a[:, 0], a[:, -1]]) if nw < nh else np.concatenate([a[0], a[-1]])
        fill = tuple(int(v) for v in edges.astype(np.uint64).sum(0) // len(edges))
        out = Image.new("RGB", (size, size), fill)
        out.paste(img, ((size - nw) // 2, (size - nh) // 2))
        return out
    if w <= h:
        return img.resize((size, int(h * size / w)), Image.BILINEAR)
    return img.resize((int(w * size / h), size), Image.BILINEAR)


def input_side(meta):
    """Side of the square the model takes, as `fashion`'s ModelInfo::input_side."""
    pre = meta["preprocess"]
    whole = meta.get("test_time_flip", False) and meta.get("second_look", "mirror") != "mirror"
    return max(pre["resize_shorter"], pre["crop"]) if whole else pre["crop"]


def main():
    model, out_path, threads, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    photos = sys.argv[5:]
    if len(photos) == 1 and photos[0] == "-":
        photos = [line.strip() for line in sys.stdin if line.strip()]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["fashion"])
    pre = meta["preprocess"]
    side, size = input_side(meta), pre["resize_shorter"]
    fit = pre.get("fit", "crop")
    mean = np.array(pre["mean"], dtype=np.float32)
    std = np.array(pre["std"], dtype=np.float32)
    heads = [h["name"] for h in meta["heads"]]
    labels = {h["name"]: h["labels"] for h in meta["heads"]}

    def load(path):
        img = Image.open(path).convert("RGB")
        img = fit_square(img, fit, size)
        nw, nh = img.size
        left, top = round((nw - side) / 2), round((nh - side) / 2)
        a = np.asarray(img.crop((left, top, left + side, top + side)), dtype=np.float32)
        return ((a - mean) / std).transpose(2, 0, 1)

    start = time.perf_counter()
    with open(out_path, "w") as out:
        for i in range(0, len(photos), batch):
            chunk = photos[i:i + batch]
            x = np.stack([load(p) for p in chunk])
            outs = dict(zip(heads, sess.run(heads, {"input": x})))
            for j, p in enumerate(chunk):
                rec = {"path": p}
                for h in heads:
                    k = int(np.argmax(outs[h][j]))
                    rec[h] = {"label": labels[h][k], "confidence": float(outs[h][j][k])}
                out.write(json.dumps(rec) + "\n")
    secs = time.perf_counter() - start
    print(json.dumps({"photos": len(photos), "seconds": secs, "photos_per_s": len(photos) / secs}))


if __name__ == "__main__":
    main()
