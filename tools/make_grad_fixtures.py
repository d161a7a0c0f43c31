"""Write the small ONNX classifiers that the gradient-graph tests (src/onnx/grad/) use.

Each model isolates one operator, or one variant of one (padding, strides, ceil mode,
an older opset, ...), on the path from the image to the logits, so that the gradient
of a loss with respect to the input can be checked against finite differences over
every input coordinate. The models are tiny (a few hundred inputs at most) and have
random weights; nothing is trained.

Conventions shared by every model:
    - one graph input `x`, float32, batch dimension symbolic (`N`): [N, C, H, W] for
      images, [N, C, L] for the 1-D convolution, [N, D] for the plain matrix cases,
      [N, H, W, C] for the channels-last case; values are meant to lie in [0, 1];
    - one graph output `logits`, float32 [N, 3], normally Flatten(axis 1) followed by
      Gemm(transB 1) with a weight [3, D] scaled by 1/sqrt(D) (`trailing_softmax` adds
      a final Softmax and calls its output `probs`);
    - all weights are initializers; opset imports only the default domain; the IR
      version follows the opset (7 for opset 13, 6 for 11, 4 for 9 and for 8);
    - each case draws from its own numpy generator, seeded from the CRC-32 of its name,
      so a rerun writes byte-identical files.
Exceptions: `concat_with_const` concatenates an initializer along the channel axis,
which only type-checks when the initializer has the batch size, so that model has a
fixed batch of 1 (its entry in cases.json says `"batch": 1`).

Every model passes `onnx.checker.check_model(full_check=True)` and is run once in
onnxruntime on a random batch (2 images; 1 for a fixed-batch model), whose output
must be finite and of shape [batch, 3]; the script stops at the first failure.

Needs: the pyenv `python3` with onnx (1.23 was used), onnxruntime and numpy. Only
onnx.helper and onnx.numpy_helper build the models; onnxruntime only checks them.

Run from the project root:
    python3 tools/make_grad_fixtures.py

Writes:
    fixtures/grad/<case>.onnx   one model per case (the list is CASES below);
    fixtures/grad/cases.json    one entry per case: name, opset, ir_version,
                                input_shape ("N" for the batch), output name, smooth
                                (true when no op on the path has a kink: no Relu,
                                LeakyRelu, Clip, MaxPool or GlobalMaxPool), ops (the op
                                types on the path, in graph order, each once); the
                                `unsupported_op` entry also has "unsupported": "Erf".
"""

import json
import math
import os
import sys
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT_DIR = os.path.join("fixtures", "grad")
# IR 3 (the release of opset 8) would require every initializer to be declared as a
# graph input as well; the checker accepts IR 4 with opset 8, which keeps `x` the only
# graph input, so opset 8 gets IR 4.
IR_FOR_OPSET = {8: 4, 9: 4, 10: 4, 11: 6, 13: 7}
NON_SMOOTH = {"Relu", "LeakyRelu", "Clip", "MaxPool", "GlobalMaxPool"}
CLASSES = 3


class Net:
    """Collects the nodes and initializers of one model, one path from `x` to the head."""

    def __init__(self, name, input_shape, opset=13, batch_dim="N"):
        self.name = name
        self.opset = opset
        self.input_shape = [batch_dim] + list(input_shape)
        self.rng = np.random.default_rng(zlib.crc32(name.encode()))
        self.nodes = []
        self.inits = []
        self.count = 0
        self.output = None
        self.extra = {}

    # --- naming and constants -------------------------------------------------------
    def fresh(self, hint):
        self.count += 1
        return f"{hint}{self.count}"

    def const(self, hint, value, dtype=np.float32):
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, hint, values):
        return self.const(hint, np.array(values, dtype=np.int64), np.int64)

    def scalar(self, hint, value):
        return self.const(hint, np.array(value, dtype=np.float32))

    def randn(self, shape, scale):
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def uniform(self, shape, low, high):
        return self.rng.uniform(low, high, size=shape).astype(np.float32)

    # --- nodes ----------------------------------------------------------------------
    def op(self, op_type, inputs, n_out=1, out_names=None, **attrs):
        outs = out_names or [self.fresh(op_type[0].lower() + op_type[1:]) for _ in range(n_out)]
        node_name = f"{op_type}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def conv(self, t, cin, cout, kernel, bias=True, group=1, **attrs):
        kernel = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel, kernel]
        fan_in = (cin // group) * math.prod(kernel)
        w = self.const("W", self.randn([cout, cin // group] + kernel, 1.0 / math.sqrt(fan_in)))
        inputs = [t, w]
        if bias:
            inputs.append(self.const("B", self.randn([cout], 0.1)))
        if group != 1:
            attrs["group"] = group
        return self.op("Conv", inputs, kernel_shape=kernel, **attrs)

    def gemm_weight(self, rows, cols, fan_in):
        return self.const("W", self.randn([rows, cols], 1.0 / math.sqrt(fan_in)))

    def head(self, t, flatten=True, out="logits"):
        """Flatten(axis 1) -> Gemm(transB 1) to [N, 3]; returns the logits' name."""
        shape = self.shape_of(t)
        d = math.prod(shape[1:]) if flatten else shape[1]
        if flatten:
            t = self.op("Flatten", [t], axis=1)
        w = self.gemm_weight(CLASSES, d, d)
        b = self.const("B", self.randn([CLASSES], 0.1))
        logits = self.op("Gemm", [t, w, b], out_names=[out], transB=1)
        self.output = out
        return logits

    # --- model assembly -------------------------------------------------------------
    def ir_version(self):
        return IR_FOR_OPSET[self.opset]

    def _model(self, output, output_shape):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, self.input_shape)
        y = helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)
        graph = helper.make_graph(self.nodes, self.name, [x], [y], initializer=self.inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", self.opset)],
            producer_name="nnmend-make_grad_fixtures",
        )
        model.ir_version = self.ir_version()
        return model

    def shape_of(self, t):
        """Static shape of tensor t (batch as the dim_param) from onnx shape inference."""
        model = self._model(t, None)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            if vi.name == t and vi.type.tensor_type.HasField("shape"):
                dims = []
                for d in vi.type.tensor_type.shape.dim:
                    if d.HasField("dim_value"):
                        dims.append(d.dim_value)
                    elif d.HasField("dim_param"):
                        dims.append(d.dim_param)
                    else:
                        raise ValueError(f"{self.name}: unknown dim in {t}")
                if dims and dims[1:] and all(isinstance(v, int) for v in dims[1:]):
                    return dims
        raise ValueError(f"{self.name}: shape inference did not give the shape of {t}")

    def model(self):
        batch = self.input_shape[0]
        return self._model(self.output, [batch, CLASSES])

    def ops(self):
        seen = []
        for n in self.nodes:
            if n.op_type not in seen:
                seen.append(n.op_type)
        return seen


# ------------------------------------------------------------------------------------
# Cases. Each function builds and returns a Net whose head has been added.
# ------------------------------------------------------------------------------------
CASES = []


def case(fn):
    CASES.append(fn)
    return fn


# --- Conv ---------------------------------------------------------------------------
@case
def conv_basic():
    n = Net("conv_basic", [3, 6, 6])
    n.head(n.conv("x", 3, 4, 3, pads=[1, 1, 1, 1]))
    return n


@case
def conv_stride2_pad():
    n = Net("conv_stride2_pad", [2, 7, 7])
    n.head(n.conv("x", 2, 3, 3, strides=[2, 2], pads=[1, 0, 2, 1]))
    return n


@case
def conv_dilated():
    n = Net("conv_dilated", [2, 8, 8])
    n.head(n.conv("x", 2, 3, 3, dilations=[2, 2], pads=[1, 1, 1, 1]))
    return n


@case
def conv_groups():
    n = Net("conv_groups", [4, 6, 6])
    n.head(n.conv("x", 4, 4, 3, group=2, pads=[1, 1, 1, 1]))
    return n


@case
def conv_same_upper():
    # 6 rows, kernel 3, stride 2: one row of padding in total, which SAME_UPPER puts
    # at the bottom; 7 columns: two, one on each side.
    n = Net("conv_same_upper", [2, 6, 7])
    n.head(n.conv("x", 2, 3, 3, strides=[2, 2], auto_pad="SAME_UPPER"))
    return n


@case
def conv_same_lower():
    n = Net("conv_same_lower", [2, 6, 7])
    n.head(n.conv("x", 2, 3, 3, strides=[2, 2], auto_pad="SAME_LOWER"))
    return n


@case
def conv_valid():
    n = Net("conv_valid", [3, 5, 5])
    n.head(n.conv("x", 3, 4, 1, auto_pad="VALID"))
    return n


@case
def conv_1d():
    n = Net("conv_1d", [3, 10])
    n.head(n.conv("x", 3, 4, [3], pads=[1, 1], strides=[1]))
    return n


@case
def conv_bias_none():
    n = Net("conv_bias_none", [3, 6, 6])
    n.head(n.conv("x", 3, 4, 3, bias=False, pads=[1, 1, 1, 1]))
    return n


# --- MaxPool ------------------------------------------------------------------------
def _maxpool(name, hw, opset=13, **attrs):
    n = Net(name, [2] + hw, opset=opset)
    n.head(n.op("MaxPool", ["x"], **attrs))
    return n


@case
def maxpool_2x2():
    return _maxpool("maxpool_2x2", [6, 6], kernel_shape=[2, 2], strides=[2, 2])


@case
def maxpool_2x2_odd():
    return _maxpool("maxpool_2x2_odd", [7, 7], kernel_shape=[2, 2], strides=[2, 2])


@case
def maxpool_3x3_s2_pad():
    return _maxpool(
        "maxpool_3x3_s2_pad", [7, 7], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
    )


@case
def maxpool_ceil():
    return _maxpool(
        "maxpool_ceil", [8, 8], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1
    )


@case
def maxpool_dilated():
    return _maxpool(
        "maxpool_dilated", [6, 6], kernel_shape=[2, 2], strides=[1, 1], dilations=[2, 2]
    )


@case
def maxpool_3x2():
    return _maxpool("maxpool_3x2", [6, 6], kernel_shape=[3, 2], strides=[1, 2])


@case
def maxpool_opset9():
    return _maxpool(
        "maxpool_opset9", [7, 7], opset=9, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
    )


@case
def maxpool_tiles_opset9():
    return _maxpool("maxpool_tiles_opset9", [6, 6], opset=9, kernel_shape=[2, 2], strides=[2, 2])


@case
def maxpool_two_outputs():
    # The Indices output exists but nothing reads it.
    n = Net("maxpool_two_outputs", [2, 6, 6])
    values, _indices = n.op("MaxPool", ["x"], n_out=2, kernel_shape=[2, 2], strides=[2, 2])
    n.head(values)
    return n


# --- AveragePool --------------------------------------------------------------------
def _avgpool(name, hw, **attrs):
    n = Net(name, [2] + hw)
    n.head(n.op("AveragePool", ["x"], **attrs))
    return n


@case
def avgpool_basic():
    return _avgpool("avgpool_basic", [6, 6], kernel_shape=[2, 2], strides=[2, 2])


@case
def avgpool_pad_exclude():
    return _avgpool(
        "avgpool_pad_exclude", [7, 7], kernel_shape=[3, 3], strides=[2, 2],
        pads=[1, 1, 1, 1], count_include_pad=0,
    )


@case
def avgpool_pad_include():
    return _avgpool(
        "avgpool_pad_include", [7, 7], kernel_shape=[3, 3], strides=[2, 2],
        pads=[1, 1, 1, 1], count_include_pad=1,
    )


@case
def avgpool_ceil():
    return _avgpool(
        "avgpool_ceil", [8, 8], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1
    )


@case
def avgpool_opset9_pad():
    # What PyTorch's exporter writes for AvgPool2d(padding=1, count_include_pad=True)
    # at opset 9: an explicit zero Pad, then an unpadded AveragePool.
    n = Net("avgpool_opset9_pad", [2, 6, 6], opset=9)
    p = n.op("Pad", ["x"], mode="constant", pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.0)
    n.head(n.op("AveragePool", [p], kernel_shape=[2, 2], strides=[2, 2]))
    return n


# --- global pooling -----------------------------------------------------------------
@case
def global_avgpool():
    n = Net("global_avgpool", [3, 6, 6])
    c = n.conv("x", 3, 4, 3, pads=[1, 1, 1, 1])
    n.head(n.op("GlobalAveragePool", [c]))
    return n


@case
def global_maxpool():
    n = Net("global_maxpool", [3, 6, 6])
    c = n.conv("x", 3, 4, 3, pads=[1, 1, 1, 1])
    n.head(n.op("GlobalMaxPool", [c]))
    return n


# --- pointwise activations (after a random Conv, so the input has both signs) ------
def _activation(name, op_type, opset=13, extra_inputs=(), **attrs):
    n = Net(name, [2, 6, 6], opset=opset)
    c = n.conv("x", 2, 3, 3, pads=[1, 1, 1, 1])
    inputs = [c] + [f(n) if callable(f) else f for f in extra_inputs]
    n.head(n.op(op_type, inputs, **attrs))
    return n


@case
def relu():
    return _activation("relu", "Relu")


@case
def relu_opset8():
    return _activation("relu_opset8", "Relu", opset=8)


@case
def leaky_relu():
    return _activation("leaky_relu", "LeakyRelu", alpha=0.2)


@case
def sigmoid():
    return _activation("sigmoid", "Sigmoid")


@case
def tanh():
    return _activation("tanh", "Tanh")


@case
def clip_opset13():
    return _activation(
        "clip_opset13", "Clip",
        extra_inputs=[lambda n: n.scalar("min", -0.2), lambda n: n.scalar("max", 0.4)],
    )


@case
def clip_opset11_min_only():
    return _activation(
        "clip_opset11_min_only", "Clip", opset=11,
        extra_inputs=[lambda n: n.scalar("min", -0.1), ""],
    )


@case
def clip_opset9():
    return _activation("clip_opset9", "Clip", opset=9, min=-0.2, max=0.4)


@case
def neg():
    n = Net("neg", [2, 5, 5])
    n.head(n.op("Neg", ["x"]))
    return n


# --- Gemm and MatMul ----------------------------------------------------------------
@case
def gemm_trans():
    n = Net("gemm_trans", [2, 4, 4])
    f = n.op("Flatten", ["x"], axis=1)
    b = n.gemm_weight(32, 8, 32)
    c = n.const("C", n.randn([8], 0.1))
    g = n.op("Gemm", [f, b, c], alpha=0.7, beta=0.5, transA=0, transB=0)
    n.head(n.op("Relu", [g]))
    return n


@case
def gemm_transA():
    # Activations transposed to [D, N]; Gemm(transA 1) brings the batch back to axis 0.
    n = Net("gemm_transA", [2, 4, 4])
    f = n.op("Flatten", ["x"], axis=1)
    t = n.op("Transpose", [f], perm=[1, 0])
    b = n.gemm_weight(32, 4, 32)
    c = n.const("C", n.randn([4], 0.1))
    n.head(n.op("Gemm", [t, b, c], transA=1))
    return n


@case
def matmul_const():
    n = Net("matmul_const", [2, 4, 4])
    f = n.op("Flatten", ["x"], axis=1)
    m = n.op("MatMul", [f, n.gemm_weight(32, 4, 32)])
    n.head(n.op("Add", [m, n.const("B", n.randn([4], 0.1))]))
    return n


@case
def matmul_both_active():
    # Attention-like scores: r = reshape(x) [N, 4, 16], a = r Wa, b = r Wb (both
    # [N, 4, 6]), scores = a b^T [N, 4, 4]: both MatMul operands depend on x.
    n = Net("matmul_both_active", [4, 4, 4])
    r = n.op("Reshape", ["x", n.ints("shape", [0, 4, -1])])
    a = n.op("MatMul", [r, n.gemm_weight(16, 6, 16)])
    b = n.op("MatMul", [r, n.gemm_weight(16, 6, 16)])
    bt = n.op("Transpose", [b], perm=[0, 2, 1])
    n.head(n.op("MatMul", [a, bt]))
    return n


# --- broadcasting arithmetic --------------------------------------------------------
@case
def add_broadcast():
    n = Net("add_broadcast", [3, 5, 5])
    n.head(n.op("Add", ["x", n.const("bias", n.randn([3, 1, 1], 0.5))]))
    return n


@case
def mul_broadcast_active():
    # Squeeze-excitation: c * sigmoid(gap(c)), the gate [N, C, 1, 1] depends on x too.
    n = Net("mul_broadcast_active", [2, 6, 6])
    c = n.conv("x", 2, 4, 3, pads=[1, 1, 1, 1])
    s = n.op("Sigmoid", [n.op("GlobalAveragePool", [c])])
    n.head(n.op("Mul", [c, s]))
    return n


@case
def sub_both():
    # a [N, 3, 6, 6] minus b [N, 3, 1, 6] (a 6x1 convolution collapses the rows), so
    # b broadcasts over H and both operands depend on x.
    n = Net("sub_both", [2, 6, 6])
    a = n.conv("x", 2, 3, 3, pads=[1, 1, 1, 1])
    b = n.conv("x", 2, 3, [6, 1])
    n.head(n.op("Sub", [a, b]))
    return n


@case
def div_both():
    # a [N, 3, 6, 6] / b with b = sigmoid(conv 1x6) + 0.5 in (0.5, 1.5), [N, 3, 6, 1]:
    # positive, depends on x, broadcasts over W.
    n = Net("div_both", [2, 6, 6])
    a = n.conv("x", 2, 3, 3, pads=[1, 1, 1, 1])
    s = n.op("Sigmoid", [n.conv("x", 2, 3, [1, 6])])
    b = n.op("Add", [s, n.scalar("half", 0.5)])
    n.head(n.op("Div", [a, b]))
    return n


@case
def div_const():
    n = Net("div_const", [3, 5, 5])
    n.head(n.op("Div", ["x", n.const("divisor", n.uniform([3, 1, 1], 0.5, 2.0))]))
    return n


# --- normalization ------------------------------------------------------------------
@case
def batchnorm():
    n = Net("batchnorm", [2, 6, 6])
    c = n.conv("x", 2, 4, 3, pads=[1, 1, 1, 1])
    scale = n.const("scale", n.uniform([4], 0.5, 1.5))
    bias = n.const("bias", n.randn([4], 0.2))
    mean = n.const("mean", n.randn([4], 0.3))
    var = n.const("var", n.uniform([4], 0.2, 2.0))
    n.head(n.op("BatchNormalization", [c, scale, bias, mean, var], epsilon=1e-3))
    return n


# --- shape ops ----------------------------------------------------------------------
@case
def flatten_reshape():
    # Reshape(-1, D) replaces the head's Flatten.
    n = Net("flatten_reshape", [2, 5, 5])
    c = n.conv("x", 2, 3, 3, pads=[1, 1, 1, 1])
    r = n.op("Reshape", [c, n.ints("shape", [-1, 75])])
    n.head(r, flatten=False)
    return n


@case
def reshape_zero():
    n = Net("reshape_zero", [3, 6, 6])
    n.head(n.op("Reshape", ["x", n.ints("shape", [0, 0, -1])]))
    return n


@case
def transpose_nhwc():
    # A Keras-like model: channels-last input, transposed to NCHW for the Conv.
    n = Net("transpose_nhwc", [6, 6, 3])
    t = n.op("Transpose", ["x"], perm=[0, 3, 1, 2])
    n.head(n.conv(t, 3, 4, 3, pads=[1, 1, 1, 1]))
    return n


@case
def squeeze_unsqueeze():
    n = Net("squeeze_unsqueeze", [2, 5, 5])
    u = n.op("Unsqueeze", ["x", n.ints("axes", [1, 4])])  # [N, 1, 2, 5, 1, 5]
    n.head(n.op("Squeeze", [u, n.ints("axes", [1, 4])]))
    return n


@case
def identity_dropout():
    n = Net("identity_dropout", [2, 5, 5])
    c = n.conv("x", 2, 3, 3, pads=[1, 1, 1, 1])
    i = n.op("Identity", [c])
    n.head(n.op("Dropout", [i]))
    return n


# --- Pad and Concat -----------------------------------------------------------------
@case
def pad_constant():
    # [N, 2, 5, 5] -> [N, 2, 8, 6]: rows +1 top, +2 bottom; columns +0 left, +1 right;
    # the padding value is 0.25.
    n = Net("pad_constant", [2, 5, 5])
    pads = n.ints("pads", [0, 0, 1, 0, 0, 0, 2, 1])
    n.head(n.op("Pad", ["x", pads, n.scalar("value", 0.25)], mode="constant"))
    return n


@case
def pad_negative():
    # [N, 2, 7, 7] -> [N, 2, 5, 6]: crop one row at the top and one at the bottom,
    # two columns on the left, add one column of zeros on the right.
    n = Net("pad_negative", [2, 7, 7])
    pads = n.ints("pads", [0, 0, -1, -2, 0, 0, -1, 1])
    n.head(n.op("Pad", ["x", pads], mode="constant"))
    return n


@case
def pad_opset9():
    n = Net("pad_opset9", [2, 5, 5], opset=9)
    n.head(n.op("Pad", ["x"], mode="constant", pads=[0, 0, 2, 1, 0, 0, 1, 0], value=0.0))
    return n


@case
def concat_channels():
    n = Net("concat_channels", [2, 6, 6])
    a = n.conv("x", 2, 3, 3, pads=[1, 1, 1, 1])
    b = n.conv("x", 2, 2, 1)
    n.head(n.op("Concat", [a, b], axis=1))
    return n


@case
def concat_with_const():
    # Concat along channels needs the initializer to carry the batch dimension, which
    # a symbolic N cannot match: this model has a fixed batch of 1.
    n = Net("concat_with_const", [2, 5, 5], batch_dim=1)
    c = n.conv("x", 2, 3, 3, pads=[1, 1, 1, 1])
    k = n.const("extra", n.uniform([1, 2, 5, 5], -0.5, 0.5))
    n.head(n.op("Concat", [c, k], axis=1))
    n.extra["batch"] = 1
    return n


# --- softmax family -----------------------------------------------------------------
@case
def softmax_mid():
    n = Net("softmax_mid", [2, 5, 5])
    c = n.conv("x", 2, 4, 3, pads=[1, 1, 1, 1])
    n.head(n.op("Softmax", [c], axis=1))
    return n


@case
def logsoftmax_mid():
    n = Net("logsoftmax_mid", [2, 5, 5])
    c = n.conv("x", 2, 3, 3, pads=[1, 1, 1, 1])
    n.head(n.op("LogSoftmax", [c], axis=-1))
    return n


@case
def softmax_opset11_last():
    n = Net("softmax_opset11_last", [12], opset=11)
    g = n.op("Gemm", ["x", n.gemm_weight(12, 6, 12), n.const("C", n.randn([6], 0.1))])
    n.head(n.op("Softmax", [g], axis=1))
    return n


@case
def trailing_softmax():
    n = Net("trailing_softmax", [2, 6, 6])
    c = n.conv("x", 2, 3, 3, pads=[1, 1, 1, 1])
    logits = n.head(c)
    n.op("Softmax", [logits], out_names=["probs"], axis=1)
    n.output = "probs"
    return n


# --- everything at once -------------------------------------------------------------
@case
def every_op():
    n = Net("every_op", [3, 12, 12])
    c = n.conv("x", 3, 8, 3, pads=[1, 1, 1, 1])                           # [N, 8, 12, 12]
    bn = n.op("BatchNormalization", [
        c, n.const("scale", n.uniform([8], 0.5, 1.5)), n.const("bias", n.randn([8], 0.2)),
        n.const("mean", n.randn([8], 0.2)), n.const("var", n.uniform([8], 0.3, 1.5)),
    ], epsilon=1e-3)
    r = n.op("Relu", [bn])
    mp = n.op("MaxPool", [r], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 6x6
    g = n.conv(mp, 8, 8, 3, group=2, pads=[1, 1, 1, 1])
    lr = n.op("LeakyRelu", [g], alpha=0.1)
    pd = n.op("Pad", [lr, n.ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])], mode="constant")  # 8x8
    ap = n.op("AveragePool", [pd], kernel_shape=[2, 2], strides=[2, 2])              # 4x4
    sg = n.op("Sigmoid", [ap])
    th = n.op("Tanh", [ap])
    cat = n.op("Concat", [sg, th], axis=1)                                # [N, 16, 4, 4]
    q = n.op("Clip", [cat, n.scalar("min", -0.02), n.scalar("max", 0.5)])
    # excitation: gate from the global average, then Mul / Add / Div / Sub broadcasts
    gap = n.op("GlobalAveragePool", [q])                                  # [N, 16, 1, 1]
    gate = n.op("Sigmoid", [gap])
    e = n.op("Mul", [q, gate])
    e = n.op("Add", [e, n.const("shift", n.randn([16, 1, 1], 0.3))])
    e = n.op("Div", [e, n.op("Add", [gate, n.scalar("half", 0.5)])])
    e = n.op("Sub", [e, gap])
    e = n.op("Neg", [e])
    # channels-last and back, with a round trip through a rank-5 tensor
    t = n.op("Transpose", [e], perm=[0, 2, 3, 1])                         # [N, 4, 4, 16]
    u = n.op("Unsqueeze", [t, n.ints("axes", [1])])
    t = n.op("Squeeze", [u, n.ints("axes", [1])])
    t = n.op("Transpose", [t], perm=[0, 3, 1, 2])                         # [N, 16, 4, 4]
    sm = n.op("Softmax", [t], axis=1)
    rs = n.op("Reshape", [sm, n.ints("shape", [0, 16, 16])])             # [N, 16, 16]
    mm = n.op("MatMul", [rs, n.gemm_weight(16, 4, 16)])                   # [N, 16, 4]
    f1 = n.op("Flatten", [mm], axis=1)                                    # [N, 64]
    gm = n.op("Flatten", [n.op("GlobalMaxPool", [q])], axis=1)            # [N, 16]
    both = n.op("Concat", [f1, gm], axis=1)                               # [N, 80]
    h = n.op("Gemm", [both, n.gemm_weight(80, 10, 80), n.const("C", n.randn([10], 0.1))])
    h = n.op("Dropout", [h])
    h = n.op("Identity", [h])
    h = n.op("LogSoftmax", [h], axis=1)
    n.head(h)
    return n


# --- not supported ------------------------------------------------------------------
UNSUPPORTED = "Erf"


@case
def unsupported_op():
    n = Net("unsupported_op", [2, 5, 5])
    c = n.conv("x", 2, 3, 3, pads=[1, 1, 1, 1])
    n.head(n.op(UNSUPPORTED, [c]))
    n.extra["unsupported"] = UNSUPPORTED
    return n


# ------------------------------------------------------------------------------------
def run_once(path, net):
    """Load the written file in onnxruntime and run one random batch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    batch = net.extra.get("batch", 2)
    shape = [batch] + net.input_shape[1:]
    x = np.random.default_rng(12345).uniform(0.0, 1.0, size=shape).astype(np.float32)
    (y,) = sess.run([net.output], {"x": x})
    assert y.shape == (batch, CLASSES), (net.name, y.shape)
    assert np.all(np.isfinite(y)), net.name
    return float(np.abs(y).max())


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    entries = []
    total = 0
    for build in CASES:
        net = build()
        model = net.model()
        onnx.checker.check_model(model, full_check=True)
        path = os.path.join(OUT_DIR, net.name + ".onnx")
        data = model.SerializeToString(deterministic=True)
        with open(path, "wb") as f:
            f.write(data)
        total += len(data)
        peak = run_once(path, net)
        ops = net.ops()
        entry = {
            "name": net.name,
            "opset": net.opset,
            "ir_version": net.ir_version(),
            "input_shape": net.input_shape,
            "output": net.output,
            "smooth": not (set(ops) & NON_SMOOTH),
            "ops": ops,
        }
        entry.update(net.extra)
        entries.append(entry)
        print(f"{net.name:24s} opset {net.opset:2d}  {len(data):6d} B  max|out| {peak:.3f}")
    with open(os.path.join(OUT_DIR, "cases.json"), "w") as f:
        f.write(json.dumps(entries, indent=1) + "\n")
    print(f"{len(entries)} models, {total} bytes of ONNX, written to {OUT_DIR}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
