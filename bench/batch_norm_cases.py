"""Batch-norm benchmark cases: fusedops against NumPy and torch (when installed).

Each case is (label, shape, channel_axis, dtype); `build_case` returns, for one phase
('forward', 'backward' or 'forward+backward'), a dict of implementation name -> callable
running that phase once in training mode. Every implementation is checked against the
others before it is timed. Bytes per element (for GB/s): forward 8 (read x, write y),
backward 12 (read dy and x, write dx), forward+backward 20.

Run directly for a table: python bench/batch_norm_cases.py [--threads N] [--repeat R]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fusedops as fo

try:
    import torch
except ImportError:  # torch columns are skipped
    torch = None

CASES = [
    ("resnet-stage2 NCHW", (64, 256, 28, 28), 1, np.float32),
    ("resnet-stage1 NCHW", (32, 64, 56, 56), 1, np.float32),
    ("resnet-stage1 NHWC", (32, 56, 56, 64), -1, np.float32),
    ("small NCHW f64", (16, 64, 28, 28), 1, np.float64),
    ("small NHWC f64", (16, 28, 28, 64), -1, np.float64),
]
PHASES = ("forward", "backward", "forward+backward")
BYTES_PER_ELEMENT = {"forward": 8, "backward": 12, "forward+backward": 20}
EPS = 1e-5
MOMENTUM = 0.1


def _numpy_impl(x, weight, bias, dy, channel_axis):
    axes = tuple(d for d in range(x.ndim) if d != channel_axis % x.ndim)
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    count = x.size // weight.size
    w = weight.reshape(shape)
    b = bias.reshape(shape)
    state = {}

    def forward():
        mean = x.mean(axis=axes, keepdims=True)
        xc = x - mean
        var = np.mean(xc * xc, axis=axes, keepdims=True)
        invstd = 1 / np.sqrt(var + EPS)
        xhat = xc * invstd
        state.update(xhat=xhat, invstd=invstd)
        return xhat * w + b

    def backward():
        xhat, invstd = state["xhat"], state["invstd"]
        dbias = dy.sum(axis=axes, keepdims=True)
        dweight = np.sum(dy * xhat, axis=axes, keepdims=True)
        return (w * invstd) * (dy - dbias / count - xhat * (dweight / count))

    return forward, backward


def _fusedops_impl(x, weight, bias, dy, channel_axis):
    running_mean = np.zeros_like(weight)
    running_var = np.ones_like(weight)
    y = np.empty_like(x)
    dx = np.empty_like(x)
    state = {}

    def forward():
        _, state["mean"], state["invstd"] = fo.batch_norm_forward(
            x, weight, bias, running_mean, running_var, momentum=MOMENTUM, eps=EPS,
            channel_axis=channel_axis, out=y)
        return y

    def backward():
        fo.batch_norm_backward(dy, x, weight, state["mean"], state["invstd"],
                               channel_axis=channel_axis, out=dx)
        return dx

    return forward, backward


def _torch_impl(x, weight, bias, dy, channel_axis):
    def nchw(a):  # channel_axis=-1 gives a channels_last tensor
        t = torch.from_numpy(a)
        return t if channel_axis == 1 else t.movedim(-1, 1)

    x_t = nchw(x).requires_grad_()
    dy_t = nchw(dy)
    w_t = torch.from_numpy(weight.copy()).requires_grad_()
    b_t = torch.from_numpy(bias.copy()).requires_grad_()
    running_mean = torch.zeros(weight.size, dtype=w_t.dtype)
    running_var = torch.ones(weight.size, dtype=w_t.dtype)
    state = {}

    def to_numpy(t):
        return t.detach().numpy() if channel_axis == 1 else t.detach().movedim(1, -1).numpy()

    def forward():
        state["y"] = torch.nn.functional.batch_norm(
            x_t, running_mean, running_var, w_t, b_t, training=True, momentum=MOMENTUM,
            eps=EPS)
        return state["y"]

    def backward():
        x_t.grad = w_t.grad = b_t.grad = None  # no accumulation into old gradients
        state["y"].backward(dy_t, retain_graph=True)  # retained: 'backward' repeats it
        return x_t.grad

    return forward, backward, to_numpy


def build_case(shape, channel_axis, dtype, phase, seed=0):
    """{implementation: callable} for one phase; each callable is checked first."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    channels = shape[channel_axis]
    weight = rng.uniform(0.5, 2, channels).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)

    impls = {"fusedops": _fusedops_impl(x, weight, bias, dy, channel_axis),
             "numpy": _numpy_impl(x, weight, bias, dy, channel_axis)}
    to_numpy = {"fusedops": np.asarray, "numpy": np.asarray}
    if torch is not None:
        *fb, convert = _torch_impl(x, weight, bias, dy, channel_axis)
        impls["torch"] = tuple(fb)
        to_numpy["torch"] = convert

    # Check: every implementation's y and dx against NumPy's.
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    ref_fwd, ref_bwd = impls["numpy"]
    y_ref = ref_fwd()
    dx_ref = ref_bwd()
    for name, (fwd, bwd) in impls.items():
        y = to_numpy[name](fwd())
        dx = to_numpy[name](bwd())
        np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=rtol, err_msg=f"{name} y")
        np.testing.assert_allclose(dx, dx_ref, rtol=rtol, atol=rtol * float(np.abs(dx_ref).max()),
                                   err_msg=f"{name} dx")

    def phase_callable(fwd, bwd):
        if phase == "forward":
            return fwd
        if phase == "backward":
            fwd()  # backward reuses the state of this forward
            return bwd
        return lambda: (fwd(), bwd())

    return {name: phase_callable(fwd, bwd) for name, (fwd, bwd) in impls.items()}


def best_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=fo.get_num_threads())
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    fo.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"fusedops {fo.__version__} isa={fo.simd_isa()} threads={args.threads}"
          + (f", torch {torch.__version__}" if torch is not None else ", torch not installed"))
    for label, shape, channel_axis, dtype in CASES:
        n = int(np.prod(shape))
        for phase in PHASES:
            impls = build_case(shape, channel_axis, dtype, phase)
            times = {name: best_time(fn, args.repeat) for name, fn in impls.items()}
            ours = times["fusedops"]
            gbs = BYTES_PER_ELEMENT[phase] * n * np.dtype(dtype).itemsize / 4 / ours / 1e9
            others = "  ".join(f"{name} {t * 1e3:7.2f} ms (x{t / ours:4.1f})"
                               for name, t in times.items() if name != "fusedops")
            print(f"{label:20s} {phase:17s} fusedops {ours * 1e3:7.2f} ms {gbs:5.1f} GB/s  "
                  + others)


if __name__ == "__main__":
    main()
