#!/usr/bin/env python3
"""Usage: onnx_equal.py A.onnx B.onnx

Exits 0 if the two ONNX files hold equal ModelProto messages (protobuf
message equality, as `onnx.load(A, load_external_data=False) ==
onnx.load(B, load_external_data=False)`), otherwise prints the first
differing field path it finds (e.g. `graph.node[3].attribute[0].ints`) and
exits 1. Exits 2 on bad usage or an unreadable file. Needs `pip install onnx`.
Used by nnmend's Rust tests to check that models survive a decode/encode.
"""

import sys

import onnx


def _fmt(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def first_difference(a, b, path="model"):
    """Return a description of the first difference between two messages, or None."""
    fa = {f.name: (f, v) for f, v in a.ListFields()}
    fb = {f.name: (f, v) for f, v in b.ListFields()}
    for desc in a.DESCRIPTOR.fields:
        name = desc.name
        sub = f"{path}.{name}" if path else name
        if name not in fa and name not in fb:
            continue
        if name not in fa or name not in fb:
            which = "first" if name in fa else "second"
            shown = (fa.get(name) or fb.get(name))[1]
            return f"{sub}: set only in the {which} file ({_fmt(shown)})"
        va, vb = fa[name][1], fb[name][1]
        is_msg = desc.message_type is not None
        if desc.is_repeated:
            for i, (x, y) in enumerate(zip(va, vb)):
                if is_msg:
                    diff = first_difference(x, y, f"{sub}[{i}]")
                    if diff:
                        return diff
                elif x != y:
                    return f"{sub}[{i}]: {_fmt(x)} != {_fmt(y)}"
            if len(va) != len(vb):
                return f"{sub}: length {len(va)} != {len(vb)}"
        elif is_msg:
            diff = first_difference(va, vb, sub)
            if diff:
                return diff
        elif va != vb:
            return f"{sub}: {_fmt(va)} != {_fmt(vb)}"
    return None


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    try:
        a = onnx.load(argv[1], load_external_data=False)
        b = onnx.load(argv[2], load_external_data=False)
    except Exception as err:  # noqa: BLE001 - report any load failure
        print(f"cannot load: {err}", file=sys.stderr)
        return 2
    if a == b:
        return 0
    diff = first_difference(a, b, "")
    print(diff or "messages differ (no differing known field found; unknown fields?)")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
