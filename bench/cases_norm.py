"""Batch-norm cases: forward, backward and forward+backward in training mode, NCHW and
NHWC, against NumPy and torch's CPU batch_norm with autograd (same memory format).

Bytes/element model (float32; x2 for float64): forward 8 (read x, write y), backward 12
(read dy and x, write dx), forward+backward 20 (x, y, dy, dx, x again); x2 for float64,
/2 for bfloat16 (x, y, dy, dx in bfloat16 with float32 parameters: 10 B/el fwd+bwd; torch
runs the same mixed-type batch norm). The statistics passes are not counted.
"""

from __future__ import annotations

import numpy as np

import fusedops as fo
from harness import Case, Impl, largest_cache_bytes, torch

EPS = 1e-5
MOMENTUM = 0.1
PHASES = {"forward": 8, "backward": 12, "fwd+bwd": 20}  # float32 bytes/element


BF16 = np.dtype(fo.bfloat16)


def _param_dtype(dtype):
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _inputs(shape, channel_axis, dtype, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[channel_axis]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = rng.uniform(0.5, 2.0, channels).astype(_param_dtype(dtype))
    bias = rng.standard_normal(channels).astype(_param_dtype(dtype))
    return x, dy, weight, bias


def _reference(x, dy, weight, bias, channel_axis):
    """(y, dx, dweight, dbias) in float64, from the formulas; computed for blocks of 64
    channels at a time, so that the float64 temporaries of a tensor of a few GB (the rows
    beyond the last-level cache) stay a fraction of it."""
    axis = channel_axis % x.ndim
    axes = tuple(d for d in range(x.ndim) if d != axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    count = x.size // weight.size
    y, dx = np.empty(x.shape), np.empty(x.shape)
    dweight, dbias = np.empty(weight.size), np.empty(weight.size)
    for c0 in range(0, weight.size, 64):
        block = (slice(None),) * axis + (slice(c0, c0 + 64),)
        xb, dyb = x[block].astype(np.float64), dy[block].astype(np.float64)
        mean = xb.mean(axis=axes, keepdims=True)
        invstd = 1 / np.sqrt(((xb - mean) ** 2).mean(axis=axes, keepdims=True) + EPS)
        xhat = (xb - mean) * invstd
        w = weight[c0:c0 + 64].astype(np.float64).reshape(shape)
        y[block] = xhat * w + bias[c0:c0 + 64].astype(np.float64).reshape(shape)
        db = dyb.sum(axis=axes)
        dw = (dyb * xhat).sum(axis=axes)
        dx[block] = w * invstd * (dyb - db.reshape(shape) / count - xhat * dw.reshape(shape) / count)
        dweight[c0:c0 + 64], dbias[c0:c0 + 64] = dw, db
    return y, dx, dweight, dbias


def _fusedops(x, dy, weight, bias, channel_axis):
    running_mean, running_var = np.zeros_like(weight), np.ones_like(weight)
    y, dx = np.empty_like(x), np.empty_like(x)
    saved = {}

    def forward():
        _, saved["mean"], saved["invstd"] = fo.batch_norm_forward(
            x, weight, bias, running_mean, running_var, momentum=MOMENTUM, eps=EPS,
            channel_axis=channel_axis, out=y)

    def backward():
        _, saved["dweight"], saved["dbias"] = fo.batch_norm_backward(
            dy, x, weight, saved["mean"], saved["invstd"], channel_axis=channel_axis, out=dx)

    return forward, backward, lambda: [y], lambda: [dx, saved["dweight"], saved["dbias"]]


def _numpy(x, dy, weight, bias, channel_axis):
    """Plain NumPy with keepdims reductions and in-place arithmetic where it helps."""
    axes = tuple(d for d in range(x.ndim) if d != channel_axis % x.ndim)
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    count = x.size // weight.size
    w, b = weight.reshape(shape), bias.reshape(shape)
    saved = {}

    def forward():
        mean = x.mean(axis=axes, keepdims=True)
        xhat = x - mean
        var = np.mean(np.square(xhat), axis=axes, keepdims=True)
        invstd = 1 / np.sqrt(var + EPS)
        xhat *= invstd
        saved.update(xhat=xhat, invstd=invstd, y=xhat * w + b)

    def backward():
        xhat = saved["xhat"]
        dbias = dy.sum(axis=axes, keepdims=True)
        dweight = np.sum(dy * xhat, axis=axes, keepdims=True)
        dx = xhat * (dweight / count)
        np.subtract(dy, dx, out=dx)
        dx -= dbias / count
        dx *= w * saved["invstd"]
        saved.update(dx=dx, dweight=dweight.ravel(), dbias=dbias.ravel())

    return (forward, backward, lambda: [saved["y"]],
            lambda: [saved["dx"], saved["dweight"], saved["dbias"]])


def _torch(x, dy, weight, bias, channel_axis):
    def nchw(a):  # channel_axis=-1: an NCHW view in channels_last memory format
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype == BF16 \
            else torch.from_numpy(a)
        return t if channel_axis == 1 else t.movedim(-1, 1)

    def to_numpy(t):
        t = t.detach()
        t = t if channel_axis == 1 else t.movedim(1, -1)
        return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()

    x_t = nchw(x).requires_grad_()
    dy_t = nchw(dy)
    w_t = torch.from_numpy(weight.copy()).requires_grad_()
    b_t = torch.from_numpy(bias.copy()).requires_grad_()
    running_mean = torch.zeros(weight.size, dtype=w_t.dtype)
    running_var = torch.ones(weight.size, dtype=w_t.dtype)
    saved = {}

    def forward():
        saved["y"] = torch.nn.functional.batch_norm(x_t, running_mean, running_var, w_t, b_t,
                                                    training=True, momentum=MOMENTUM, eps=EPS)

    def backward():
        x_t.grad = w_t.grad = b_t.grad = None  # fresh gradients, no accumulation
        saved["y"].backward(dy_t, retain_graph=True)  # retained: a backward-only case repeats

    return (forward, backward, lambda: [to_numpy(saved["y"])],
            lambda: [to_numpy(x_t.grad), w_t.grad.numpy(), b_t.grad.numpy()])


def batch_norm_case(shape, channel_axis, dtype, phase, sweep="", numpy=True):
    itemsize = np.dtype(dtype).itemsize
    bytes_per_element = PHASES[phase] * itemsize / 4
    layout = ("NCHW" if channel_axis == 1 else "NHWC") if len(shape) == 4 else \
        {2: "NC", 3: "NCL"}.get(len(shape), f"{len(shape)}-D")
    label = f"{layout} {'x'.join(map(str, shape))}, {bytes_per_element:g} B/el"

    def build():
        arrays = _inputs(shape, channel_axis, dtype)
        y, dx, dweight, dbias = _reference(*arrays, channel_axis)
        reference = {"forward": [y], "backward": [dx, dweight, dbias],
                     "fwd+bwd": [y, dx, dweight, dbias]}[phase]
        makers = [("fusedops", _fusedops)]
        # NumPy has no 16-bit arithmetic worth timing; the rows beyond the last-level cache
        # leave it out too (its temporaries would take several times the tensor, seconds a call)
        if numpy and np.dtype(dtype).itemsize >= 4:
            makers.append(("numpy", _numpy))
        if torch is not None:
            makers.append(("torch", _torch))
        impls = []
        for name, make in makers:
            forward, backward, y_of, grads_of = make(*arrays, channel_axis)
            if phase == "forward":
                impls.append(Impl(name, forward, y_of))
            elif phase == "backward":
                forward()  # the state every timed backward starts from
                impls.append(Impl(name, backward, grads_of))
            else:
                impls.append(Impl(name, lambda f=forward, b=backward: (f(), b()),
                                  lambda y=y_of, g=grads_of: y() + g()))
        return impls, reference

    # float32 sums over ~1e5 values (NumPy, torch) carry ~1e-2 absolute error in dweight;
    # 16-bit outputs are within an ulp of the reference (2^-8 relative for bfloat16)
    rtol, atol = {4: (1e-4, 2e-2), 8: (1e-9, 1e-9)}.get(itemsize, (1e-2, 5e-2))
    return Case(f"batch_norm {phase}", label, np.dtype(dtype).name, int(np.prod(shape)), 1,
                bytes_per_element, build, rtol=rtol, atol=atol, baseline="torch", sweep=sweep)


# Size sweeps per layout, from MLP activations to beyond the L2 (the plot draws each as
# ns/element against size): (shape, channel_axis).
SWEEPS = {
    "NC (BatchNorm1d after Linear)": [((32, 128), 1), ((64, 256), 1), ((32, 4096), 1),
                                      ((256, 1024), 1), ((1024, 1024), 1), ((8192, 256), 1),
                                      ((1024, 4096), 1), ((4096, 4096), 1)],
    "NCL (BatchNorm1d on sequences)": [((16, 32, 32), 1), ((128, 64, 32), 1),
                                       ((64, 128, 128), 1), ((256, 256, 64), 1)],
    "NCHW": [((8, 32, 14, 14), 1), ((16, 512, 14, 14), 1), ((32, 64, 56, 56), 1),
             ((64, 256, 28, 28), 1)],
    "NHWC": [((8, 14, 14, 32), -1), ((16, 14, 14, 512), -1), ((32, 56, 56, 64), -1),
             ((64, 28, 28, 256), -1)],
}
# The quick run's sweep: the MLP sizes where per-call overhead shows.
QUICK_SWEEP = ("NC (BatchNorm1d after Linear)", [((32, 128), 1), ((64, 256), 1),
                                                 ((256, 1024), 1), ((1024, 1024), 1)])


def beyond_cache_shapes():
    """NCHW (N, 256, 28, 28) and NHWC (N, 28, 28, 256) float32 with N the smallest multiple
    of 64 that makes one array at least 1.25x the largest cache: the fixed shapes above
    fit in a large server L3 (a 480 MiB one holds x, y, dy and dx of (64, 256, 28, 28)),
    where forward+backward reads its inputs from the L3, not from memory. A larger batch is
    how activations grow past the cache in training."""
    n = 64
    while n * 256 * 28 * 28 * 4 < 1.25 * largest_cache_bytes():
        n += 64
    return [((n, 256, 28, 28), 1), ((n, 28, 28, 256), -1)]


def norm_cases(quick: bool):
    f32, f64 = np.float32, np.float64
    shapes = [((64, 256, 28, 28), 1), ((32, 64, 56, 56), 1), ((32, 56, 56, 64), -1)]
    beyond = [batch_norm_case(shape, axis, f32, "fwd+bwd", numpy=False)
              for shape, axis in beyond_cache_shapes() if shape not in dict(shapes)]
    if quick:
        name, sweep = QUICK_SWEEP
        return ([batch_norm_case(shape, axis, f32, "fwd+bwd") for shape, axis in shapes]
                + beyond
                + [batch_norm_case(shape, axis, BF16, "fwd+bwd") for shape, axis in shapes]
                + [batch_norm_case(shape, axis, f32, "fwd+bwd", sweep=name)
                   for shape, axis in sweep])
    cases = list(beyond)
    for name, sweep in SWEEPS.items():
        for phase in PHASES:
            cases += [batch_norm_case(shape, axis, f32, phase, sweep=name)
                      for shape, axis in sweep]
        cases += [batch_norm_case(shape, axis, dt, "fwd+bwd", sweep=name)
                  for shape, axis in sweep for dt in (f64, BF16)]
    return cases
