#!/usr/bin/env python3
"""Write fixtures/proto_everything.onnx, a small ONNX file that sets (nearly)
every field of every message of onnx.proto (IR 11+), for round-trip tests of
nnmend's hand-written prost messages (src/onnx/proto.rs).

Run from the project root: `python3 tools/make_proto_fixture.py`.
Needs `pip install onnx` (1.18 or newer for the IR-11 multi-device fields).

The file is a structural fixture, not a valid or runnable model: it holds an
initializer whose data is "external" (a file that does not exist), so load it
with `onnx.load(path, load_external_data=False)`. It also sets fields to
empty/default values explicitly, to check that proto2 presence survives, and
uses extreme numbers (-0.0, inf, int64/uint64 limits) to check exact bytes.
"""

import os

from onnx import (AttributeProto, FunctionProto, GraphProto, ModelProto,
                  NodeProto, SparseTensorProto, StringStringEntryProto,
                  TensorProto, TypeProto, ValueInfoProto, helper)

OUT = os.path.join("fixtures", "proto_everything.onnx")
I64_MIN, I64_MAX, U64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def meta(msg, prefix):
    """Add two metadata_props entries, the second with an empty value."""
    msg.metadata_props.add(key=prefix + ".k", value="v")
    msg.metadata_props.add(key=prefix + ".empty", value="")


def tensor_type(elem, dims, denotation=None):
    """A TypeProto for a tensor; dims entries are int, str or None."""
    t = TypeProto()
    t.tensor_type.elem_type = elem
    shape = t.tensor_type.shape  # also marks the shape present when empty
    shape.SetInParent()
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d
            dim.denotation = "DATA_BATCH"
    if denotation is not None:
        t.denotation = denotation
    return t


def value_info(name, typ, doc=None):
    vi = ValueInfoProto(name=name)
    vi.type.CopyFrom(typ)
    if doc is not None:
        vi.doc_string = doc
        meta(vi, name)
    return vi


def all_types():
    """One TypeProto of each kind, nested ones included."""
    seq = TypeProto(denotation="SEQ")
    seq.sequence_type.elem_type.CopyFrom(tensor_type(TensorProto.FLOAT, [2]))
    mp = TypeProto()
    mp.map_type.key_type = TensorProto.INT64
    mp.map_type.value_type.CopyFrom(tensor_type(TensorProto.STRING, []))
    opt = TypeProto(denotation="OPT")
    opt.optional_type.elem_type.CopyFrom(seq)
    sparse = TypeProto()
    sparse.sparse_tensor_type.elem_type = TensorProto.DOUBLE
    sparse.sparse_tensor_type.shape.dim.add(dim_value=5)
    opaque = TypeProto(denotation="")
    opaque.opaque_type.domain = "ai.example"
    opaque.opaque_type.name = "Blob"
    empty_seq = TypeProto()
    empty_seq.sequence_type.SetInParent()  # present but empty
    no_shape = TypeProto()
    no_shape.tensor_type.elem_type = TensorProto.INT8  # shape absent
    return [seq, mp, opt, sparse, opaque, empty_seq, no_shape]


def typed_tensors():
    """Tensors using each typed data field, raw_data, segment and external data."""
    ts = [
        helper.make_tensor("f32", TensorProto.FLOAT, [3], [1.5, -0.0, float("inf")]),
        helper.make_tensor("i32", TensorProto.INT32, [2], [-(2**31), 2**31 - 1]),
        helper.make_tensor("str", TensorProto.STRING, [2], [b"a", b"\xff\x00"]),
        helper.make_tensor("i64", TensorProto.INT64, [2], [I64_MIN, I64_MAX]),
        helper.make_tensor("f64", TensorProto.DOUBLE, [2], [1e-300, -2.5]),
        helper.make_tensor("u64", TensorProto.UINT64, [2], [0, U64_MAX]),
        helper.make_tensor("raw", TensorProto.UINT8, [2, 2], b"\x00\x01\x02\x03", raw=True),
    ]
    c64 = TensorProto(name="c64", data_type=TensorProto.COMPLEX64, dims=[1], float_data=[1.0, 2.0])
    ts.append(c64)
    seg = TensorProto(name="seg", data_type=TensorProto.INT64, dims=[4], int64_data=[7, 8],
                      doc_string="second half of a chunked tensor")
    seg.segment.begin = 2
    seg.segment.end = 4
    meta(seg, "seg")
    ts.append(seg)
    ext = TensorProto(name="ext", data_type=TensorProto.FLOAT, dims=[1, 2])
    ext.data_location = TensorProto.EXTERNAL
    for k, v in [("location", "weights.bin"), ("offset", "0"), ("length", "8")]:
        ext.external_data.add(key=k, value=v)
    ts.append(ext)
    present_default = TensorProto(name="", data_type=TensorProto.UNDEFINED, raw_data=b"",
                                  data_location=TensorProto.DEFAULT, doc_string="")
    ts.append(present_default)  # every optional field present with its default value
    f8 = TensorProto(name="f8", data_type=TensorProto.FLOAT8E4M3FN, dims=[2], int32_data=[0x38, 0xB8])
    ts.append(f8)
    i4 = TensorProto(name="i4", data_type=TensorProto.INT4, dims=[3], int32_data=[0x7F, 0x08])
    ts.append(i4)
    fp4 = TensorProto(name="fp4", data_type=TensorProto.FLOAT4E2M1, dims=[2], raw_data=b"\x21")
    ts.append(fp4)
    return ts


def sparse(name):
    values = helper.make_tensor(name, TensorProto.FLOAT, [2], [3.0, 4.0])
    indices = helper.make_tensor(name + "_idx", TensorProto.INT64, [2], [1, 7])
    return helper.make_sparse_tensor(values, indices, [2, 4])


def subgraph(name):
    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name=name + "_id")],
        name,
        [value_info("x", tensor_type(TensorProto.FLOAT, [1]))],
        [value_info("y", tensor_type(TensorProto.FLOAT, [1]))],
    )
    return g


def all_attributes():
    attrs = [
        helper.make_attribute("f", -0.0),
        helper.make_attribute("i", I64_MIN),
        helper.make_attribute("s", b"bytes\x00"),
        helper.make_attribute("t", typed_tensors()[0]),
        helper.make_attribute("g", subgraph("then_branch")),
        helper.make_attribute("sparse", sparse("sp_attr")),
        helper.make_attribute("tp", all_types()[2]),
        helper.make_attribute("floats", [1.0, float("-inf")]),
        helper.make_attribute("ints", [1, -1, I64_MAX]),
        helper.make_attribute("strings", [b"x", b""]),
        helper.make_attribute("tensors", typed_tensors()[1:3]),
        helper.make_attribute("graphs", [subgraph("g1"), subgraph("g2")]),
        helper.make_attribute("sparses", [sparse("s1")]),
        helper.make_attribute("tps", all_types()[:2]),
        helper.make_attribute("empty_ints", [], attr_type=AttributeProto.INTS),
    ]
    attrs[0].doc_string = "a float"
    # An attribute with every field unset but the name.
    attrs.append(AttributeProto(name="untyped"))
    return attrs


def device_config(node):
    dc = node.device_configurations.add(configuration_id="two_gpus", pipeline_stage=1)
    spec = dc.sharding_spec.add(tensor_name=node.input[0], device=[0, 1, -1])
    spec.index_to_device_group_map.add(key=-1, value=[0, 1])
    sd = spec.sharded_dim.add(axis=0)
    sd.simple_sharding.add(dim_value=4, num_shards=2)
    sd.simple_sharding.add(dim_param="N", num_shards=2)
    dc.sharding_spec.add(tensor_name=node.output[0])


def function():
    fn = FunctionProto(name="MyFn", domain="local", overload="v2", doc_string="a function")
    fn.input.extend(["a"])
    fn.output.extend(["b"])
    fn.attribute.extend(["alpha"])
    beta = helper.make_attribute("beta", 0.5)
    fn.attribute_proto.append(beta)
    node = helper.make_node("LeakyRelu", ["a"], ["b"], name="lr")
    ref = AttributeProto(name="alpha", ref_attr_name="alpha", type=AttributeProto.FLOAT)
    node.attribute.append(ref)
    fn.node.append(node)
    fn.opset_import.add(domain="", version=21)
    fn.value_info.append(value_info("a", tensor_type(TensorProto.FLOAT, ["N"])))
    meta(fn, "fn")
    return fn


def training_info():
    ti = ModelProto().training_info.add()
    ti.initialization.CopyFrom(subgraph("init"))
    ti.algorithm.CopyFrom(subgraph("algo"))
    ti.initialization_binding.add(key="w", value="y")
    ti.update_binding.add(key="w", value="y")
    return ti


def main():
    n1 = helper.make_node("Conv", ["X", "W"], ["Y"], name="conv", domain="",
                          doc_string="node doc")
    n1.attribute.extend(all_attributes())
    meta(n1, "conv")
    device_config(n1)
    n2 = helper.make_node("MyFn", ["Y"], ["Z"], domain="local")
    n2.overload = "v2"
    n3 = NodeProto(op_type="If")  # name/domain absent; empty input/output

    inits = typed_tensors()
    graph = helper.make_graph(
        [n1, n2, n3], "everything",
        [value_info("X", tensor_type(TensorProto.FLOAT, ["batch", 3, None, 8], "TENSOR"),
                    doc="input doc")],
        [value_info("Z", tensor_type(TensorProto.FLOAT, ["batch", 5]))],
        initializer=inits,
        doc_string="graph doc",
        value_info=[value_info("t%d" % i, t) for i, t in enumerate(all_types())],
        sparse_initializer=[sparse("sp_init")],
    )
    qa = graph.quantization_annotation.add(tensor_name="Y")
    qa.quant_parameter_tensor_names.add(key="SCALE", value="f32")
    qa.quant_parameter_tensor_names.add(key="ZERO_POINT", value="raw")
    meta(graph, "graph")

    model = helper.make_model(graph, producer_name="make_proto_fixture",
                              producer_version="1", domain="org.nnmend.test",
                              model_version=I64_MAX, doc_string="model doc",
                              opset_imports=[helper.make_opsetid("", 21),
                                             helper.make_opsetid("local", 1)])
    model.ir_version = 11
    meta(model, "model")
    model.training_info.append(training_info())
    model.functions.append(function())
    cfg = model.configuration.add(name="two_gpus", num_devices=2)
    cfg.device.extend(["cuda:0", "cuda:1"])
    model.configuration.add(name="")  # present but empty

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    data = model.SerializeToString()
    with open(OUT, "wb") as f:
        f.write(data)
    print(f"wrote {OUT} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
