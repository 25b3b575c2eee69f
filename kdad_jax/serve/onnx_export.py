"""A trained anomaly-map function as an ONNX model (``--config.export.format=onnx``).

Ours: a small translator from the function's jaxpr to ONNX nodes, built with the ``onnx``
package's helpers. (jax2onnx, the maintained converter, pins orbax-checkpoint below the version
we use and, at 0.17, cannot give ``jax.image.resize`` a dynamic batch.) The translation:

* **Constant folding.** Everything that does not depend on the images — trained weights, the
  normalization constants, ``jax.image.resize``'s interpolation matrices — is evaluated in JAX at
  export time and stored as an initializer. Only image-dependent operations become nodes.
* **A dynamic batch.** The function is traced at batch 1 and the batch axis followed through every
  operation; an operation that would mix images of a batch (a reshape across the batch axis, a
  sum over it) is an ``UnsupportedError`` naming it, never a model right at batch 1 only.
* **Layouts.** Convolutions and pools run in ONNX's NCHW between two transposes; ONNX Runtime's
  and OpenVINO's optimizers remove the transposes that cancel.

Operations without a rule (sorting, gathers, loops) raise ``UnsupportedError`` with the
primitive's name. Export is float32: bfloat16 runs export with ``jax_export``.
"""

import hashlib
from typing import Callable, Dict, List, Optional, Sequence

import jax
import numpy as np

OPSET = 18
IR_VERSION = 9  # ONNX 1.15+: read by ONNX Runtime ≥ 1.16 and OpenVINO ≥ 2023.1
BATCH = "batch"


class UnsupportedError(ValueError):
    """The function uses an operation this translator has no ONNX rule for."""


class Live:
    """An image-dependent value: an ONNX tensor name, its shape at batch 1, where its batch axis is."""

    def __init__(self, name: str, shape: Sequence[int], dtype, batch_axis: Optional[int]):
        self.name, self.shape, self.dtype, self.batch_axis = name, tuple(shape), np.dtype(dtype), batch_axis


class _Graph:
    """Nodes and initializers of the model being built."""

    def __init__(self):
        import onnx  # the optional 'onnx' extra; imported only when exporting
        self.onnx = onnx
        self.nodes: List = []
        self.initializers: List = []
        self._const_names: Dict[str, str] = {}
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, array) -> str:
        """Name of an initializer holding ``array`` (equal arrays share one)."""
        array = np.ascontiguousarray(np.asarray(array))
        key = hashlib.sha1(str((array.dtype, array.shape)).encode() + array.tobytes()).hexdigest()
        if key not in self._const_names:
            name = self.fresh("const")
            self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
            self._const_names[key] = name
        return self._const_names[key]

    def node(self, op: str, inputs: Sequence[str], **attributes) -> str:
        out = self.fresh(op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], **attributes))
        return out

    def ints(self, values) -> str:
        return self.const(np.asarray(values, np.int64))


def _name(graph: _Graph, value) -> str:
    return value.name if isinstance(value, Live) else graph.const(value)


def _batch_axis(values) -> Optional[int]:
    axes = {v.batch_axis for v in values if isinstance(v, Live)}
    if len(axes) != 1:
        raise UnsupportedError(f"operands with batch axes {sorted(axes, key=str)}")
    return axes.pop()


def _compact(array: np.ndarray) -> np.ndarray:
    """A constant operand of an elementwise op with every axis along which it does not vary cut to
    size 1 (ONNX broadcasting restores it; the batch axis must become 1)."""
    array = np.asarray(array)
    for axis in range(array.ndim):
        if array.shape[axis] > 1 and (array == array.take([0], axis=axis)).all():
            array = array.take([0], axis=axis)
    return array


def _check_batch_free(array: np.ndarray, batch_axis: Optional[int], what: str) -> None:
    if batch_axis is not None and array.ndim > batch_axis and array.shape[batch_axis] != 1:
        raise UnsupportedError(f"{what}: a constant varies along the batch axis")


# ---- rules: (graph, eqn, inputs) -> Live ------------------------------------------------------

def _elementwise(op: str, post: Optional[str] = None) -> Callable:
    def rule(graph, eqn, inputs):
        axis = _batch_axis(inputs)
        names = []
        for value in inputs:
            if not isinstance(value, Live):
                value = _compact(value)
                _check_batch_free(value, axis, eqn.primitive.name)
            names.append(_name(graph, value))
        out = graph.node(op, names)
        if post:
            out = graph.node(post, [out])
        return _live(out, eqn, axis)
    return rule


def _live(name: str, eqn, batch_axis: Optional[int]) -> Live:
    aval = eqn.outvars[0].aval
    return Live(name, aval.shape, aval.dtype, batch_axis)


def _unary(op: str) -> Callable:
    return lambda graph, eqn, inputs: _live(graph.node(op, [inputs[0].name]), eqn, inputs[0].batch_axis)


def _rsqrt(graph, eqn, inputs):
    return _live(graph.node("Reciprocal", [graph.node("Sqrt", [inputs[0].name])]), eqn, inputs[0].batch_axis)


def _integer_pow(graph, eqn, inputs):
    x, power = inputs[0], eqn.params["y"]
    if power == 2:
        return _live(graph.node("Mul", [x.name, x.name]), eqn, x.batch_axis)
    return _live(graph.node("Pow", [x.name, graph.const(np.asarray(power, x.dtype))]), eqn, x.batch_axis)


def _convert(graph, eqn, inputs):
    x, new = inputs[0], np.dtype(eqn.params["new_dtype"])
    if new == x.dtype:
        return _live(graph.node("Identity", [x.name]), eqn, x.batch_axis)
    to = graph.onnx.helper.np_dtype_to_tensor_dtype(new)
    return _live(graph.node("Cast", [x.name], to=to), eqn, x.batch_axis)


def _select_n(graph, eqn, inputs):
    if len(inputs) != 3:
        raise UnsupportedError(f"select_n with {len(inputs) - 1} cases")
    predicate, if_false, if_true = inputs
    return _elementwise("Where")(graph, eqn, [predicate, if_true, if_false])


def _clamp(graph, eqn, inputs):
    low, x, high = inputs
    if not isinstance(x, Live) or isinstance(low, Live) or isinstance(high, Live):
        raise UnsupportedError("clamp with image-dependent bounds")
    out = graph.node("Max", [x.name, graph.const(_compact(low))])
    return _live(graph.node("Min", [out, graph.const(_compact(high))]), eqn, x.batch_axis)


def _broadcast_in_dim(graph, eqn, inputs):
    x = inputs[0]
    shape, dims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
    new_axes = [i for i in range(len(shape)) if i not in dims]
    name = graph.node("Unsqueeze", [x.name, graph.ints(new_axes)]) if new_axes else x.name
    axis = None if x.batch_axis is None else dims[x.batch_axis]
    target = [1 if i == axis else d for i, d in enumerate(shape)]
    return _live(graph.node("Expand", [name, graph.ints(target)]), eqn, axis)


def _reshape(graph, eqn, inputs):
    x, sizes, order = inputs[0], eqn.params["new_sizes"], eqn.params.get("dimensions")
    if order is not None:  # transpose first, then reshape
        axis = None if x.batch_axis is None else list(order).index(x.batch_axis)
        x = Live(graph.node("Transpose", [x.name], perm=list(order)),
                 [x.shape[d] for d in order], x.dtype, axis)
    if x.batch_axis is None:
        return _live(graph.node("Reshape", [x.name, graph.ints(sizes)]), eqn, None)
    if x.batch_axis != 0 or not sizes or sizes[0] != 1:
        raise UnsupportedError(f"reshape {list(x.shape)} -> {list(sizes)} across the batch axis")
    return _live(graph.node("Reshape", [x.name, graph.ints([-1, *sizes[1:]])]), eqn, 0)


def _squeeze(graph, eqn, inputs):
    x, dims = inputs[0], tuple(eqn.params["dimensions"])
    if x.batch_axis in dims:
        raise UnsupportedError("squeeze of the batch axis")
    axis = None if x.batch_axis is None else x.batch_axis - sum(d < x.batch_axis for d in dims)
    return _live(graph.node("Squeeze", [x.name, graph.ints(dims)]), eqn, axis)


def _transpose(graph, eqn, inputs):
    x, perm = inputs[0], list(eqn.params["permutation"])
    axis = None if x.batch_axis is None else perm.index(x.batch_axis)
    return _live(graph.node("Transpose", [x.name], perm=perm), eqn, axis)


def _slice(graph, eqn, inputs):
    x = inputs[0]
    starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
    steps = eqn.params["strides"] or (1,) * len(starts)
    axes = [a for a in range(len(starts)) if (starts[a], limits[a], steps[a]) != (0, x.shape[a], 1)]
    if x.batch_axis in axes:
        raise UnsupportedError("slice of the batch axis")
    if not axes:
        return _live(graph.node("Identity", [x.name]), eqn, x.batch_axis)
    out = graph.node("Slice", [x.name, graph.ints([starts[a] for a in axes]), graph.ints([limits[a] for a in axes]),
                               graph.ints(axes), graph.ints([steps[a] for a in axes])])
    return _live(out, eqn, x.batch_axis)


def _rev(graph, eqn, inputs):
    x, axes = inputs[0], list(eqn.params["dimensions"])
    if x.batch_axis in axes:
        raise UnsupportedError("rev of the batch axis")
    big = np.iinfo(np.int64)
    out = graph.node("Slice", [x.name, graph.ints([-1] * len(axes)), graph.ints([big.min] * len(axes)),
                               graph.ints(axes), graph.ints([-1] * len(axes))])
    return _live(out, eqn, x.batch_axis)


def _pad(graph, eqn, inputs):
    x, value = inputs
    if isinstance(value, Live):
        raise UnsupportedError("pad with an image-dependent value")
    config = eqn.params["padding_config"]
    if any(interior for _, _, interior in config):
        raise UnsupportedError("pad with interior padding")
    if x.batch_axis is not None and config[x.batch_axis][:2] != (0, 0):
        raise UnsupportedError("pad of the batch axis")
    grow = [max(lo, 0) for lo, _, _ in config] + [max(hi, 0) for _, hi, _ in config]
    out = graph.node("Pad", [x.name, graph.ints(grow), graph.const(np.asarray(value, x.dtype))], mode="constant")
    crop = [a for a, (lo, hi, _) in enumerate(config) if lo < 0 or hi < 0]
    if crop:  # negative padding removes rows
        padded = [d + max(lo, 0) + max(hi, 0) for d, (lo, hi, _) in zip(x.shape, config)]
        out = graph.node("Slice", [out, graph.ints([-min(config[a][0], 0) for a in crop]),
                                   graph.ints([padded[a] + min(config[a][1], 0) for a in crop]),
                                   graph.ints(crop)])
    return _live(out, eqn, x.batch_axis)


def _concatenate(graph, eqn, inputs):
    axis, dim = _batch_axis(inputs), eqn.params["dimension"]
    if axis == dim:
        raise UnsupportedError("concatenate along the batch axis")
    reference = next(v for v in inputs if isinstance(v, Live))
    names = [v.name if isinstance(v, Live) else _batch_expanded(graph, v, reference) for v in inputs]
    return _live(graph.node("Concat", names, axis=dim), eqn, axis)


def _batch_expanded(graph, array: np.ndarray, like: Live) -> str:
    """A constant [.., 1 (batch axis), ..] repeated to ``like``'s batch size."""
    axis = like.batch_axis
    _check_batch_free(array, axis, "concatenate")
    batch = graph.node("Shape", [like.name], start=axis, end=axis + 1)
    shape = graph.node("Concat", [graph.ints(array.shape[:axis]), batch, graph.ints(array.shape[axis + 1:])], axis=0)
    return graph.node("Expand", [graph.const(array), shape])


def _reduce(op: str) -> Callable:
    def rule(graph, eqn, inputs):
        x, axes = inputs[0], tuple(eqn.params["axes"])
        if x.batch_axis in axes:
            raise UnsupportedError(f"{eqn.primitive.name} over the batch axis")
        axis = None if x.batch_axis is None else x.batch_axis - sum(a < x.batch_axis for a in axes)
        return _live(graph.node(op, [x.name, graph.ints(axes)], keepdims=0), eqn, axis)
    return rule


def _dot_general(graph, eqn, inputs):
    """Any dot_general as an Einsum (JAX's output order: batch, lhs free, rhs free)."""
    lhs, rhs = inputs
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs_letters = [next(letters) for _ in range(len(eqn.invars[0].aval.shape))]
    rhs_letters = [next(letters) for _ in range(len(eqn.invars[1].aval.shape))]
    for i, j in zip((*lhs_contract, *lhs_batch), (*rhs_contract, *rhs_batch)):
        rhs_letters[j] = lhs_letters[i]
    out_dims = ([("l", i) for i in lhs_batch]
                + [("l", i) for i in range(len(lhs_letters)) if i not in (*lhs_contract, *lhs_batch)]
                + [("r", j) for j in range(len(rhs_letters)) if j not in (*rhs_contract, *rhs_batch)])
    out_letters = [(lhs_letters if side == "l" else rhs_letters)[k] for side, k in out_dims]
    axis = None
    for side, value in (("l", lhs), ("r", rhs)):
        if isinstance(value, Live) and value.batch_axis is not None:
            if (side, value.batch_axis) not in out_dims:
                raise UnsupportedError("dot_general contracting the batch axis")
            if axis is not None:
                raise UnsupportedError("dot_general of two batched operands")
            axis = out_dims.index((side, value.batch_axis))
    equation = f"{''.join(lhs_letters)},{''.join(rhs_letters)}->{''.join(out_letters)}"
    out = graph.node("Einsum", [_name(graph, lhs), _name(graph, rhs)], equation=equation)
    out_dtype = np.dtype(eqn.outvars[0].aval.dtype)
    if out_dtype != np.result_type(eqn.invars[0].aval.dtype, eqn.invars[1].aval.dtype):
        out = graph.node("Cast", [out], to=graph.onnx.helper.np_dtype_to_tensor_dtype(out_dtype))
    return _live(out, eqn, axis)


def _nchw(graph, x: Live, what: str):
    """[B, H, W, C] with the batch first -> (NCHW name, the perm back)."""
    if x.batch_axis != 0 or len(x.shape) != 4:
        raise UnsupportedError(f"{what} of a {len(x.shape)}-d tensor with batch axis {x.batch_axis}")
    return graph.node("Transpose", [x.name], perm=[0, 3, 1, 2]), [0, 2, 3, 1]


def _pool(op: str, scale_by_window: bool) -> Callable:
    """reduce_window_{sum,max} over the spatial axes of [B, H, W, C] as AveragePool·k² / MaxPool."""
    def rule(graph, eqn, inputs):
        x, p = inputs[0], eqn.params
        window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
        if (window[0], window[3], strides[0], strides[3]) != (1, 1, 1, 1) or tuple(padding[0]) != (0, 0) \
                or tuple(padding[3]) != (0, 0) or set(p["base_dilation"]) | set(p["window_dilation"]) != {1}:
            raise UnsupportedError(f"{eqn.primitive.name} beyond spatial windows")
        nchw, back = _nchw(graph, x, eqn.primitive.name)
        attributes = dict(kernel_shape=list(window[1:3]), strides=list(strides[1:3]),
                          pads=[padding[1][0], padding[2][0], padding[1][1], padding[2][1]])
        if scale_by_window:
            attributes["count_include_pad"] = 1
        out = graph.node(op, [nchw], **attributes)
        if scale_by_window:
            out = graph.node("Mul", [out, graph.const(np.asarray(window[1] * window[2], x.dtype))])
        return _live(graph.node("Transpose", [out], perm=back), eqn, 0)
    return rule


def _conv(graph, eqn, inputs):
    x, kernel = inputs
    p = eqn.params
    if isinstance(kernel, Live):
        raise UnsupportedError("convolution with an image-dependent kernel")
    if set(p["lhs_dilation"]) != {1} or p["batch_group_count"] != 1:
        raise UnsupportedError("transposed or batch-grouped convolution")
    if any(lo < 0 or hi < 0 for lo, hi in p["padding"]):
        raise UnsupportedError("convolution with negative padding")
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    if x.batch_axis != lhs_spec[0]:
        raise UnsupportedError("convolution whose batch axis is not the images' batch axis")
    nchw = graph.node("Transpose", [x.name], perm=list(lhs_spec))
    weights = graph.const(np.transpose(np.asarray(kernel), rhs_spec))  # -> [O, I, kh, kw]
    (top, bottom), (left, right) = p["padding"]
    out = graph.node("Conv", [nchw, weights], strides=list(p["window_strides"]),
                     dilations=list(p["rhs_dilation"]), group=p["feature_group_count"],
                     pads=[top, left, bottom, right])
    return _live(graph.node("Transpose", [out], perm=list(np.argsort(out_spec))), eqn, out_spec[0])


_RULES: Dict[str, Callable] = {
    "add": _elementwise("Add"), "sub": _elementwise("Sub"), "mul": _elementwise("Mul"),
    "div": _elementwise("Div"), "max": _elementwise("Max"), "min": _elementwise("Min"),
    "pow": _elementwise("Pow"),
    "gt": _elementwise("Greater"), "ge": _elementwise("GreaterOrEqual"), "lt": _elementwise("Less"),
    "le": _elementwise("LessOrEqual"), "eq": _elementwise("Equal"), "ne": _elementwise("Equal", "Not"),
    "and": _elementwise("And"), "or": _elementwise("Or"),
    "not": _unary("Not"), "neg": _unary("Neg"), "abs": _unary("Abs"), "sqrt": _unary("Sqrt"),
    "exp": _unary("Exp"), "log": _unary("Log"), "tanh": _unary("Tanh"), "logistic": _unary("Sigmoid"),
    "sign": _unary("Sign"), "floor": _unary("Floor"), "ceil": _unary("Ceil"), "erf": _unary("Erf"),
    "copy": _unary("Identity"),
    "rsqrt": _rsqrt, "integer_pow": _integer_pow, "convert_element_type": _convert,
    "select_n": _select_n, "clamp": _clamp,
    "broadcast_in_dim": _broadcast_in_dim, "reshape": _reshape, "squeeze": _squeeze,
    "transpose": _transpose, "slice": _slice, "rev": _rev, "pad": _pad, "concatenate": _concatenate,
    "reduce_sum": _reduce("ReduceSum"), "reduce_max": _reduce("ReduceMax"), "reduce_min": _reduce("ReduceMin"),
    "dot_general": _dot_general, "conv_general_dilated": _conv,
    "reduce_window_sum": _pool("AveragePool", True), "reduce_window_max": _pool("MaxPool", False),
}


def _inner(eqn):
    """(jaxpr, consts) of a call-like equation (jit, custom_jvp_call, custom_vjp_call, remat)."""
    for key in ("jaxpr", "call_jaxpr"):
        inner = eqn.params.get(key)
        if inner is not None:
            return (inner.jaxpr, list(inner.consts)) if hasattr(inner, "consts") else (inner, [])
    return None


def _onnx_platform_index(platforms) -> np.ndarray:
    """``lax.platform_dependent``'s branch for ONNX: the default one (XLA's standard ops, which
    map onto ONNX's; the CPU forms are XLA CPU workarounds, ``kdad_jax.kernels``)."""
    if None not in platforms:
        raise UnsupportedError(f"a platform-dependent operation without a default form "
                               f"(platforms {platforms})")
    return np.asarray(list(platforms).index(None), np.int32)


def _interpret(graph: _Graph, jaxpr, consts, args) -> list:
    """Values of ``jaxpr``'s outputs: numpy arrays where image-independent, ``Live`` otherwise."""
    env = {}

    def read(var):
        if hasattr(var, "val"):  # a Literal
            return np.asarray(var.val, var.aval.dtype)
        return env[var]

    for var, value in [*zip(jaxpr.constvars, consts), *zip(jaxpr.invars, args)]:
        env[var] = value if isinstance(value, Live) else np.asarray(value)
    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        inner = _inner(eqn)
        if eqn.primitive.name == "platform_index":
            outputs = [_onnx_platform_index(eqn.params["platforms"])]
        elif eqn.primitive.name == "cond" and not isinstance(inputs[0], Live):
            branch = eqn.params["branches"][int(inputs[0])]
            outputs = _interpret(graph, branch.jaxpr, list(branch.consts), inputs[1:])
        elif inner is not None:
            outputs = _interpret(graph, inner[0], inner[1], inputs)
        elif not any(isinstance(v, Live) for v in inputs):
            result = eqn.primitive.bind(*inputs, **eqn.params)
            outputs = [np.asarray(r) for r in (result if eqn.primitive.multiple_results else [result])]
        elif eqn.primitive.name in _RULES:
            outputs = [_RULES[eqn.primitive.name](graph, eqn, inputs)]
        else:
            raise UnsupportedError(f"no ONNX rule for the JAX operation {eqn.primitive.name!r}")
        for var, value in zip(eqn.outvars, outputs):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def to_onnx(function: Callable, arguments: Sequence, image_shape: Sequence[int], doc: str = ""):
    """ONNX model of ``function(*arguments, images)``: ``images`` [batch, *image_shape] float32 ->
    ``maps`` (the function's output, batch first). ``arguments`` become constants."""
    import onnx
    graph = _Graph()
    traced = jax.make_jaxpr(function)(*arguments, np.zeros((1, *image_shape), np.float32))
    flat_arguments = jax.tree_util.tree_leaves(arguments)
    images = Live("images", (1, *image_shape), np.float32, 0)
    (output,) = _interpret(graph, traced.jaxpr, traced.consts, [*flat_arguments, images])
    if not isinstance(output, Live) or output.batch_axis != 0:
        raise UnsupportedError("the output does not depend on the images batch-first")
    graph.nodes.append(onnx.helper.make_node("Identity", [output.name], ["maps"]))
    float32 = onnx.TensorProto.FLOAT
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            graph.nodes, "anomaly_map",
            [onnx.helper.make_tensor_value_info("images", float32, [BATCH, *image_shape])],
            [onnx.helper.make_tensor_value_info("maps", float32, [BATCH, *output.shape[1:]])],
            graph.initializers),
        opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="kdad_jax", doc_string=doc)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model
