"""Graph helpers shared by `ort_tensor.py`, `ort_run.py` and `crosscheck.py`.

Not meant to be run on its own. Needs the pyenv `python3` with onnx, onnxruntime and
numpy (`pip install onnx onnxruntime numpy`).

- `topological_order`: nodes in dependency order, whatever order the file lists them in
  (keras2onnx writes them out of order).
- `find_cut`: the last pooling node, in that order, among the nodes the first graph
  output depends on; this is the cut nnmend makes.
- `with_output`: a copy of the model with an intermediate tensor added as a graph output,
  typed from shape inference (FLOAT with no shape when inference cannot type it).
- `run`: run a model on CPU onnxruntime, image by image when its batch dimension is fixed to 1
  (unless told to use a given batch size exactly).
"""

import numpy as np
import onnx
import onnxruntime as ort

POOL_OPS = {"MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool", "LpPool", "GlobalLpPool"}


def data_inputs(model):
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def topological_order(graph):
    """Indices of graph.node in an order where every node follows the producers of its inputs.

    Kahn's algorithm, taking ready nodes in file order, so an already sorted graph
    keeps its order. Tensors nobody in the graph produces (inputs, initializers,
    outer-scope names) count as available from the start. Indices, not node objects:
    protobuf hands out a fresh wrapper on each access, so object identity means nothing.
    """
    producers = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name:
                producers[name] = index
    deps = [{producers[name] for name in node.input if name in producers} for node in graph.node]
    users = [[] for _ in graph.node]
    for index, needed in enumerate(deps):
        for producer in needed:
            users[producer].append(index)
    pending = [len(needed) for needed in deps]
    ready = [index for index, count in enumerate(pending) if count == 0]
    order = []
    while ready:
        ready.sort()
        index = ready.pop(0)
        order.append(index)
        for user in users[index]:
            pending[user] -= 1
            if pending[user] == 0:
                ready.append(user)
    if len(order) != len(graph.node):
        raise ValueError("graph has a cycle")
    return order


def ancestors_of(graph, tensor):
    """Indices of the nodes that `tensor` depends on (the node producing it included)."""
    producer = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name:
                producer[name] = index
    seen, stack, nodes = set(), [tensor], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        index = producer.get(name)
        if index is not None:
            nodes.add(index)
            stack.extend(graph.node[index].input)
    return nodes


def find_cut(model):
    """(node, position in topological order) of the last pooling node feeding output 0, or None."""
    graph = model.graph
    feeding = ancestors_of(graph, graph.output[0].name)
    last = None
    for position, index in enumerate(topological_order(graph)):
        node = graph.node[index]
        if node.op_type in POOL_OPS and node.domain in ("", "ai.onnx") and index in feeding:
            last = (node, position)
    return last


def tensor_type(model, tensor):
    """The TypeProto of `tensor` from shape inference, or None when inference cannot tell."""
    for value in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        if value.name == tensor and value.type.HasField("tensor_type"):
            return value.type
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference fails on some exporters' graphs; fall back below
        return None
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        if value.name == tensor and value.type.tensor_type.elem_type != 0:
            return value.type
    return None


def with_output(model, tensor):
    """A copy of `model` whose graph also outputs `tensor` (after the existing outputs)."""
    graph = model.graph
    if any(value.name == tensor for value in graph.output):
        return model
    produced = {name for node in graph.node for name in node.output}
    if tensor not in produced:
        raise ValueError(f"no node produces tensor {tensor!r}")
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    inferred = tensor_type(model, tensor)
    value = extended.graph.output.add()
    value.name = tensor
    if inferred is not None:
        value.type.CopyFrom(inferred)
    else:
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return extended


def batch_is_one(model):
    """True when the (single) data input has its first dimension fixed to 1."""
    dims = data_inputs(model)[0].type.tensor_type.shape.dim
    return len(dims) > 0 and dims[0].HasField("dim_value") and dims[0].dim_value == 1


def session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model, x, outputs, batch=256, exact=False):
    """Run `model` on float32 `x` and return the listed outputs, concatenated over the batch.

    Batches of `batch` images, or one image at a time when the model's batch dimension
    is fixed to 1, unless `exact`: then always batches of `batch` (the last one may be
    smaller), which onnxruntime refuses for a model that takes only one image.
    """
    inputs = data_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs)
        raise ValueError(f"model has {len(inputs)} data inputs ({names}); expected one")
    name = inputs[0].name
    sess = session(model)
    step = 1 if batch_is_one(model) and not exact else batch
    x = np.ascontiguousarray(x, dtype=np.float32)
    parts = [sess.run(outputs, {name: x[i : i + step]}) for i in range(0, len(x), step)]
    return [np.concatenate([part[k] for part in parts], axis=0) for k in range(len(outputs))]


def flat(array):
    """[N, ...] -> [N, D] float32."""
    return np.ascontiguousarray(array.reshape(array.shape[0], -1), dtype=np.float32)
