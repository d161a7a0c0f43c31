#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ from the
project's fixtures and small slices of the shared data sets.

Run from anywhere: python3 fuzz/make_seeds.py [--shared ../shared]
The seeds follow each target's input layout, documented at the top of its file in
fuzz_targets/. Needs numpy, Pillow and onnx (as the fixture scripts in tools/ do).
"""

import argparse
import gzip
import io
import pathlib
import struct
import tarfile

import numpy as np
import onnx
from PIL import Image

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent


def put(target, name, data):
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(bytes(data))


def chunk(b):
    b = bytes(b)[:0xFFFF]
    return struct.pack("<H", len(b)) + b


def onnx_seeds(shared):
    small = sorted(ROOT.glob("fixtures/*.onnx")) + sorted((shared / "models").glob("*.onnx"))
    for p in small:
        model = onnx.load(str(p), load_external_data=False)
        if p.stat().st_size <= 64 * 1024:
            put("onnx_decode", p.name, p.read_bytes())
        # The graph without its weights: every initializer points at the 256-byte
        # weights.bin the target writes beside the model, so the structure of large
        # models is kept and external data is exercised.
        for t in model.graph.initializer:
            t.ClearField("raw_data")
            del t.float_data[:]
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", "256")):
                e = t.external_data.add()
                e.key, e.value = k, v
        data = model.SerializeToString()
        if len(data) <= 64 * 1024:
            put("onnx_decode", p.stem + "-external.onnx", data)


def idx_seeds(shared):
    with gzip.open(shared / "datasets/mnist/t10k-images-idx3-ubyte.gz") as f:
        f.read(16)
        pixels = f.read(3 * 784)
    with gzip.open(shared / "datasets/mnist/t10k-labels-idx1-ubyte.gz") as f:
        f.read(8)
        labels = f.read(3)
    for n in (1, 3):
        images = struct.pack(">IIII", 0x803, n, 28, 28) + pixels[: n * 784]
        labs = struct.pack(">II", 0x801, n) + labels[:n]
        put("idx", f"raw-{n}", bytes([0, 0]) + chunk(images) + labs)
        put("idx", f"gz-{n}", bytes([3, 0]) + chunk(gzip.compress(images)) + gzip.compress(labs))
        put("idx", f"test-dotted-limit-{n}", bytes([0x8C, 1]) + chunk(images) + labs)
    tiny = struct.pack(">IIII", 0x803, 2, 2, 3) + bytes(range(12))
    put("idx", "tiny", bytes([0, 0]) + chunk(tiny) + struct.pack(">II", 0x801, 2) + b"\x01\x00")


def cifar_images(shared, n):
    out = []
    with tarfile.open(shared / "datasets/cifar10-jpeg.tar.gz") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".jpg"):
                out.append((m.name, tar.extractfile(m).read()))
                if len(out) == n:
                    break
    return out


def cifar_seeds(jpegs):
    records = []
    for i, (_, jpg) in enumerate(jpegs[:6]):
        img = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
        records.append(bytes([i % 10]) + img.transpose(2, 0, 1).tobytes())
    meta = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n"
    train = b"".join(chunk(r) for r in records[:5])
    put("cifar", "train", bytes([4, 0]) + train + meta)
    put("cifar", "train-subdir-limit", bytes([0x82, 3]) + train)
    put("cifar", "test", bytes([1, 0]) + chunk(records[0] + records[1]))
    put("cifar", "test-limit", bytes([0x85, 1]) + chunk(records[2] + records[3]) + meta)


def npz_seeds(jpegs):
    def save(name, compressed=False, **arrays):
        buf = io.BytesIO()
        (np.savez_compressed if compressed else np.savez)(buf, **arrays)
        put("npz", name, buf.getvalue())

    mnist = np.load(ROOT / "fixtures/mnist-small-test.npz")
    x, y = mnist["x"][:2], mnist["y"][:2]
    save("mnist-nchw-f32", x=x, y=y)
    save("mnist-nchw-f32-deflate", True, x=x, y=y)
    save("mnist-nhw-u8", x=(x[:, 0] * 255).astype(np.uint8), y=y.astype(np.uint8))
    save("mnist-flat-f64", x=x.reshape(2, -1).astype(np.float64), y=y.reshape(2, 1).astype(np.int32))
    save("mnist-fortran", x=np.asfortranarray(x[:, 0]), y=y)
    save("big-endian", x=x[:1].astype(">f4"), y=y[:1].astype(">i8"))
    rgb = np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for _, j in jpegs[:2]])
    save("cifar-nhwc-u8", True, x=rgb, y=np.array([0, 1], dtype=np.uint16))
    save("extra-arrays", x=np.zeros((1, 3, 2, 2), np.float32), y=np.array([4]), eps=np.array([0.1]))


def png(mode, size, value):
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def folder_seeds(jpegs):
    grey = png("L", (4, 4), 100)
    rgb = png("RGB", (4, 4), (10, 20, 30))
    rgba = png("RGBA", (4, 4), (10, 20, 30, 40))
    grey16 = png("I;16", (4, 4), 1000)

    def files(entries):
        return b"".join(bytes([h]) + chunk(b) for h, b in entries)

    put("image_folder", "grey-two-classes", bytes([0, 0]) + files([(0x00, grey), (0x01, grey), (0x01, grey)]))
    put("image_folder", "rgb-rgba", bytes([0, 0]) + files([(0x00, rgb), (0x02, rgba), (0x23, b"notes")]))
    put("image_folder", "grey16-limit", bytes([0x80, 1]) + files([(0x00, grey16), (0x01, grey16)]))
    put("image_folder", "jpeg-split-test", bytes([3, 0]) + files([(0x10, jpegs[0][1]), (0x15, jpegs[1][1])]))
    put("image_folder", "jpeg-split-train", bytes([1, 0]) + files([(0x10, jpegs[2][1]), (0x11, jpegs[3][1])]))


def spec_seeds():
    seeds = {
        "npz": "small.npz\n\n\n0.5\n0.25\n1,4,4",
        "npz-flat": "flat.npz\n\n1\n\n\n12",
        "idx": "idx\ntest\n2\n0.1307\n0.3081\n1,4,4",
        "idx-nhwc": "idx\n\n\n0.1\n\n4,4,1",
        "cifar": "cifar\ntrain\n3\n0.49,0.48,0.45\n0.25,0.24,0.26\n3,32,32",
        "folder": "folder\n\n\n\n\n3,4,4",
        "split": "split\ntest\n\n-1\n2\n16",
        "notes": "notes.txt\n\n\n\n\n1,4,4",
        "empty": "empty\n\n\n\n\n1,4,4",
        "missing": "missing/dir\n\n\n\n\n1,4,4",
    }
    for name, text in seeds.items():
        put("data_spec", name, text.encode())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=pathlib.Path, default=ROOT.parent / "shared")
    args = ap.parse_args()
    jpegs = cifar_images(args.shared, 8)
    onnx_seeds(args.shared)
    idx_seeds(args.shared)
    cifar_seeds(jpegs)
    npz_seeds(jpegs)
    folder_seeds(jpegs)
    spec_seeds()
    for d in sorted((FUZZ / "corpus").iterdir()):
        files = list(d.iterdir())
        print(f"{d.name}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
