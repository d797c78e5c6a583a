#!/usr/bin/env python3
"""Checks hpdl's ONNX exports: onnx.checker (full_check, with shape inference),
the input/output contract (input [N, C, H, W] float32 with a dynamic N, output
[N, classes]), and the logits of a small numpy interpreter of the graph,
written here independently of hpdl (convolution by im2col, transposed
convolution by scattering each input pixel's kernel-sized contribution, LSTM
and GRU in both directions from the ONNX operator equations, the shape and
reduction ops of the transformer graphs, in float64), against hpdl's own
forward.

  onnx_check.py zoo REFERENCE_BIN WORKDIR
      runs REFERENCE_BIN WORKDIR (tests/integration/onnx_reference.cpp), then
      checks every WORKDIR/NAME/{model.onnx, input.npy, logits.npy}.
  onnx_check.py predict MODEL.onnx IDX_GZ PREDICT_TXT
      compares the graph on the first samples of an idx image file with the
      classes and probabilities `hpdl predict` printed for them.
  onnx_check.py values MODEL.onnx INPUT.npy PREDICT_TXT
      a regression export (output 'values' [N, k]): the graph on the samples
      of a float .npy must give the k values per sample `hpdl predict` printed.
"""
import gzip
import math
import os
import struct
import subprocess
import sys

import numpy as np

try:
    import onnx
    from onnx import numpy_helper
except ImportError:
    sys.exit("onnx_check.py: python3-onnx is missing (scripts/setup.sh installs it)")

RTOL = 1e-4


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def windows(x, kh, kw, sh, sw, dh, dw):
    """[N, C, H, W] (already padded) -> [N, C, P, Q, kh, kw] strided sliding windows."""
    v = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return v[:, :, ::sh, ::sw, ::dh, ::dw]


def pad_hw(x, pads, value=0.0):
    t, l, b, r = pads
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)


def conv(x, w, b, a):
    kh, kw = a.get("kernel_shape", w.shape[2:])
    sh, sw = a.get("strides", [1, 1])
    dh, dw = a.get("dilations", [1, 1])
    g = a.get("group", 1)
    win = windows(pad_hw(x, a.get("pads", [0, 0, 0, 0])), kh, kw, sh, sw, dh, dw)
    n, c, p, q = win.shape[:4]
    o = w.shape[0]
    cg, og = c // g, o // g
    out = np.empty((n, o, p, q))
    for gi in range(g):  # im2col: [N*P*Q, Cg*kh*kw] @ [Cg*kh*kw, Og]
        cols = win[:, gi * cg:(gi + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * p * q, -1)
        wm = w[gi * og:(gi + 1) * og].reshape(og, -1)
        out[:, gi * og:(gi + 1) * og] = (cols @ wm.T).reshape(n, p, q, og).transpose(0, 3, 1, 2)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def conv_transpose(x, w, b, a):
    """ONNX ConvTranspose (no output_shape): x [N, C, H, W], w [C, O/g, kh, kw].
    Input pixel (i, j) adds x[i, j] * w[:, :, p, q] at full-output position
    (i*s + p*d, j*s + q*d); the output is the full size
    s*(H-1) + output_padding + (k-1)*d + 1, less pads[begin] and pads[end]."""
    assert "output_shape" not in a and a.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET")
    c, og, kh, kw = w.shape
    assert tuple(a.get("kernel_shape", (kh, kw))) == (kh, kw)
    sh, sw = a.get("strides", [1, 1])
    dh, dw = a.get("dilations", [1, 1])
    oph, opw = a.get("output_padding", [0, 0])
    t, l, bt, r = a.get("pads", [0, 0, 0, 0])
    g = a.get("group", 1)
    n, _, h, wd = x.shape
    cg = c // g
    full_h = sh * (h - 1) + oph + (kh - 1) * dh + 1
    full_w = sw * (wd - 1) + opw + (kw - 1) * dw + 1
    full = np.zeros((n, og * g, full_h, full_w))
    for gi in range(g):
        xg = x[:, gi * cg:(gi + 1) * cg]
        for p in range(kh):
            for q in range(kw):
                contrib = np.einsum("nchw,co->nohw", xg, w[gi * cg:(gi + 1) * cg, :, p, q])
                full[:, gi * og:(gi + 1) * og, p * dh:p * dh + sh * (h - 1) + 1:sh,
                     q * dw:q * dw + sw * (wd - 1) + 1:sw] += contrib
    y = full[:, :, t:full_h - bt, l:full_w - r]
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y


def pool(x, a, kind):
    kh, kw = a["kernel_shape"]
    sh, sw = a.get("strides", [1, 1])
    pads = a.get("pads", [0, 0, 0, 0])
    assert a.get("ceil_mode", 0) == 0
    if kind == "max":
        return windows(pad_hw(x, pads, -np.inf), kh, kw, sh, sw, 1, 1).max(axis=(4, 5))
    s = windows(pad_hw(x, pads), kh, kw, sh, sw, 1, 1).sum(axis=(4, 5))
    if a.get("count_include_pad", 0):
        return s / (kh * kw)
    ones = pad_hw(np.ones((1, 1) + x.shape[2:]), pads)
    return s / windows(ones, kh, kw, sh, sw, 1, 1).sum(axis=(4, 5))


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def recurrent_direction(op, x, w, r, b, hs, linear_before_reset):
    """One direction of an ONNX LSTM (gates i, o, f, c) or GRU (z, r, h) with the
    default activations, from the operator spec, over x [T, N, I] in the order
    given. w [G*H, I], r [G*H, H], b [2*G*H] = [Wb, Rb]. Returns the hidden states [T, N, H]."""
    wb, rb = np.split(b, 2)
    h = np.zeros((x.shape[1], hs))
    c = np.zeros_like(h)
    ys = []
    for xt in x:
        gx = xt @ w.T + wb  # [N, G*H]
        gh = h @ r.T + rb
        if op == "LSTM":
            i_, o_, f_, c_ = np.split(gx + gh, 4, axis=1)
            c = sigmoid(f_) * c + sigmoid(i_) * np.tanh(c_)
            h = sigmoid(o_) * np.tanh(c)
        else:
            xz, xr, xh = np.split(gx, 3, axis=1)
            hz, hr, hh = np.split(gh, 3, axis=1)
            z, rr = sigmoid(xz + hz), sigmoid(xr + hr)
            if linear_before_reset:
                n = np.tanh(xh + rr * hh)
            else:  # (r * h) @ Rh^T + Rbh
                n = np.tanh(xh + (rr * h) @ r[2 * hs:].T + rb[2 * hs:])
            h = (1 - z) * n + z * h
        ys.append(h)
    return np.stack(ys)


def recurrent(op, x, w, r, b, a):
    """ONNX LSTM or GRU, direction forward, reverse or bidirectional. x [T, N, I],
    w [D, G*H, I], r [D, G*H, H], b [D, 2*G*H]. The reverse direction reads the
    sequence from its end; its output at step t is aligned with input step t.
    Returns Y [T, D, N, H] and Y_h [D, N, H] (the last step each direction took)."""
    direction = a.get("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    assert a.get("layout", 0) == 0
    hs = a["hidden_size"]
    n_gates = 4 if op == "LSTM" else 3
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    assert w.shape[0] == len(dirs), f"W has {w.shape[0]} directions, direction is {direction}"
    ys, hn = [], []
    for d, backwards in enumerate(dirs):
        bd = b[d] if b is not None else np.zeros(2 * n_gates * hs)
        xs = x[::-1] if backwards else x
        y = recurrent_direction(op, xs, w[d], r[d], bd, hs, a.get("linear_before_reset", 0))
        hn.append(y[-1])
        ys.append(y[::-1] if backwards else y)
    return np.stack(ys, axis=1), np.stack(hn)


def softmax(v, axis):
    """ONNX Softmax (opset 13): exp(v - max) / sum(exp(v - max)) along one axis."""
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def onnx_slice(data, starts, ends, axes=None, steps=None):
    """ONNX Slice: per listed axis, start/end counted from the end when negative and clamped
    to the axis; Python's slice applies the same rules for the positive steps used here."""
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * data.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        assert st > 0, "onnx_check.py: Slice with a negative step is not interpreted"
        index[int(ax)] = slice(int(s), int(e), int(st))
    return data[tuple(index)]


def run(model, x):
    g = model.graph
    env = {t.name: numpy_helper.to_array(t).astype(np.float64 if t.data_type == 1 else np.int64)
           for t in g.initializer}
    env[g.input[0].name] = x.astype(np.float64)
    for node in g.node:
        a = attrs(node)
        i = [env[n] if n else None for n in node.input]
        op = node.op_type
        if op == "Conv":
            y = conv(i[0], i[1], i[2] if len(i) > 2 else None, a)
        elif op == "ConvTranspose":
            y = conv_transpose(i[0], i[1], i[2] if len(i) > 2 else None, a)
        elif op == "Gemm":
            A = i[0].T if a.get("transA", 0) else i[0]
            B = i[1].T if a.get("transB", 0) else i[1]
            y = a.get("alpha", 1.0) * (A @ B)
            if len(i) > 2:
                y = y + a.get("beta", 1.0) * i[2]
        elif op == "MatMul":
            y = i[0] @ i[1]
        elif op == "BatchNormalization":
            xx, sc, bi, mu, var = i
            shp = (1, -1) + (1,) * (xx.ndim - 2)
            y = (xx - mu.reshape(shp)) / np.sqrt(var.reshape(shp) + a.get("epsilon", 1e-5)) * sc.reshape(shp) \
                + bi.reshape(shp)
        elif op == "Relu":
            y = np.maximum(i[0], 0)
        elif op == "LeakyRelu":
            y = np.where(i[0] >= 0, i[0], a.get("alpha", 0.01) * i[0])
        elif op == "Tanh":
            y = np.tanh(i[0])
        elif op == "Sigmoid":
            y = 1 / (1 + np.exp(-i[0]))
        elif op == "Erf":
            y = np.vectorize(math.erf)(i[0])
        elif op in ("Add", "Sub", "Mul", "Div"):
            y = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](i[0], i[1])
        elif op == "MaxPool":
            y = pool(i[0], a, "max")
        elif op == "AveragePool":
            y = pool(i[0], a, "avg")
        elif op == "GlobalAveragePool":
            y = i[0].mean(axis=(2, 3), keepdims=True)
        elif op == "Flatten":
            ax = a.get("axis", 1)
            y = i[0].reshape(int(np.prod(i[0].shape[:ax])), -1)
        elif op == "Reshape":
            shape = [i[0].shape[k] if s == 0 else s for k, s in enumerate(i[1])]
            y = i[0].reshape(shape)
        elif op == "Identity":
            y = i[0]
        elif op == "Transpose":
            y = i[0].transpose(a["perm"])
        elif op == "Squeeze":
            y = np.squeeze(i[0], axis=tuple(int(k) for k in i[1]))
        elif op == "Sqrt":
            y = np.sqrt(i[0])
        elif op == "ReduceMean":
            axes = a.get("axes")
            y = i[0].mean(axis=None if axes is None else tuple(axes), keepdims=bool(a.get("keepdims", 1)))
        elif op == "Softmax":
            y = softmax(i[0], a.get("axis", -1))
        elif op == "Gather":
            y = np.take(i[0], i[1], axis=a.get("axis", 0))
        elif op == "Shape":
            y = np.array(i[0].shape, dtype=np.int64)
        elif op == "Slice":
            y = onnx_slice(*i)
        elif op == "Concat":
            y = np.concatenate(i, axis=a["axis"])
        elif op == "Expand":  # bidirectional broadcast of the input and the given shape
            y = np.broadcast_to(i[0], np.broadcast_shapes(i[0].shape, tuple(int(d) for d in i[1]))).copy()
        elif op in ("LSTM", "GRU"):
            assert len(i) <= 4 or all(v is None for v in i[4:]), f"{node.name}: sequence_lens/initial states unsupported"
            y = recurrent(op, i[0], i[1], i[2], i[3] if len(i) > 3 else None, a)
        else:
            raise SystemExit(f"onnx_check.py: no interpreter rule for op {op} (node {node.name})")
        for name, value in zip(node.output, y if isinstance(y, tuple) else (y,)):
            env[name] = value
    return env[g.output[0].name]


def check_contract(model, path, sample=None):
    onnx.checker.check_model(model, full_check=True)
    g = model.graph
    assert len(g.input) == 1 and len(g.output) == 1, f"{path}: expected one input and one output"
    ti, to = g.input[0].type.tensor_type, g.output[0].type.tensor_type
    names = (g.input[0].name, g.output[0].name)
    assert names in (("input", "logits"), ("input", "values"), ("z", "images")), \
        f"{path}: input and output named {names}"
    assert ti.elem_type == onnx.TensorProto.FLOAT and to.elem_type == onnx.TensorProto.FLOAT
    assert ti.shape.dim[0].dim_param == "N" and to.shape.dim[0].dim_param == "N", f"{path}: batch is not dynamic"
    if sample is not None:
        dims = [d.dim_value for d in ti.shape.dim[1:]]
        assert dims == list(sample), f"{path}: input dims {dims}, samples are {list(sample)}"
    # Shape inference must carry the symbolic batch through to the logits.
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type.shape.dim
    assert out[0].dim_param == "N", f"{path}: inferred output batch {out[0]}"
    assert all(n.op_type != "Dropout" for n in g.node), f"{path}: Dropout in an inference graph"


def compare(name, got, want):
    assert got.shape == want.shape, f"{name}: interpreter logits {got.shape}, hpdl {want.shape}"
    err = float(np.abs(got - want).max())
    scale = max(1.0, float(np.abs(want).max()))
    print(f"{name}: max |onnx - hpdl| = {err:.3g} (logit scale {scale:.3g}), {len(want)} samples")
    assert err <= RTOL * scale, f"{name}: ONNX graph and hpdl disagree by {err:.3g} > {RTOL} * {scale:.3g}"


def zoo(reference_bin, work):
    subprocess.run([reference_bin, work], check=True)
    names = sorted(d for d in os.listdir(work) if os.path.isfile(os.path.join(work, d, "model.onnx")))
    for required in ("mlp", "lenet5", "resnet20", "alexnet_bn", "conv_transpose", "bilstm", "bigru", "dcgan_generator",
                     "vit", "encoder_post_norm", "attention_causal", "group_norm"):
        assert required in names, f"no export for {required} in {work}"
    for name in names:
        d = os.path.join(work, name)
        model = onnx.load(os.path.join(d, "model.onnx"))
        x = np.load(os.path.join(d, "input.npy"))
        want = np.load(os.path.join(d, "logits.npy"))
        check_contract(model, name, x.shape[1:])
        compare(name, run(model, x), want)
        # The batch is dynamic: one sample alone gives the same logits.
        compare(name + "[batch 1]", run(model, x[1:2]), want[1:2])
    print(f"{len(names)} exports checked")


def predict(model_path, idx_gz, predict_txt):
    model = onnx.load(model_path)
    check_contract(model, model_path)
    with gzip.open(idx_gz, "rb") as f:
        blob = f.read()
    ndim = blob[3]
    dims = struct.unpack(">" + "I" * ndim, blob[4:4 + 4 * ndim])
    pixels = np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims[0], 1, dims[1], dims[2])
    rows = [line.split("\t") for line in open(predict_txt) if "\tclass " in line]
    assert rows, f"no predictions in {predict_txt}"
    x = pixels[:len(rows)].astype(np.float32) / 255.0  # what hpdl predict feeds: uint8 / 255
    logits = run(model, x)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    for k, r in enumerate(rows):
        cls, prob = int(r[2].split()[1]), float(r[3].strip().split("=")[1])
        assert int(p[k].argmax()) == cls, f"sample {k}: ONNX class {p[k].argmax()}, hpdl predict {cls}"
        assert abs(p[k, cls] - prob) <= 1e-3, f"sample {k}: ONNX p={p[k, cls]:.5f}, hpdl predict p={prob}"
    print(f"{len(rows)} predictions match hpdl predict")


def values(model_path, input_npy, predict_txt):
    model = onnx.load(model_path)
    check_contract(model, model_path)
    assert model.graph.output[0].name == "values", f"{model_path}: a regression export's output is 'values'"
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    rows = [line.rstrip("\n").split("\t") for line in open(predict_txt) if "\tvalue " in line]
    assert rows, f"no values in {predict_txt}"
    want = np.array([[float(v) for v in r[2].split()[1:]] for r in rows])
    x = np.load(input_npy).astype(np.float32)
    x = x.reshape([x.shape[0]] + dims)[:len(rows)]
    got = run(model, x)
    assert got.shape == want.shape, f"ONNX values {got.shape}, hpdl predict {want.shape}"
    err = float(np.abs(got - want).max())
    scale = max(1.0, float(np.abs(want).max()))
    print(f"max |onnx - hpdl predict| = {err:.3g} (scale {scale:.3g})")
    # predict prints 7 significant digits
    assert err <= 1e-5 * scale, f"ONNX graph and hpdl predict disagree by {err:.3g}"
    print(f"{len(rows)} predictions match hpdl predict")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "zoo":
        zoo(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "predict":
        predict(*sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "values":
        values(*sys.argv[2:])
    else:
        sys.exit(__doc__)
