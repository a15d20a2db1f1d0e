"""Calls from several Python threads at once: the kernels release the GIL, so these run
side by side in the native code, each thread with its own arrays, over plans, scratch
buffers and parallel regions of different sizes, while another thread changes the thread
count. Each thread's results must be the bits the same calls give one after another on
one thread (and results never depend on the thread count). CI also runs this file under
ThreadSanitizer (.ci/run), which reports any data race among those calls."""

import threading

import numpy as np
import pytest

import fusedops as fo
from checks import assert_bitwise_equal

BF16 = np.dtype(fo.bfloat16)


def _batch_norm_calls(rng, dtype, shape, channel_axis):
    """Forward, backward and the split pieces of one batch-norm case; its outputs."""
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    channels = shape[channel_axis]
    pdt = np.float64 if dtype == np.float64 else np.float32
    weight = rng.uniform(0.5, 2.0, channels).astype(pdt)
    bias = rng.standard_normal(channels).astype(pdt)
    running_mean, running_var = np.zeros(channels, pdt), np.ones(channels, pdt)
    y, mean, invstd = fo.batch_norm_forward(x, weight, bias, running_mean, running_var,
                                            channel_axis=channel_axis)
    dx, dweight, dbias = fo.batch_norm_backward(dy, x, weight, mean, invstd,
                                                channel_axis=channel_axis)
    smean, m2 = fo.batch_norm_stats(x, channel_axis=channel_axis)
    y2 = fo.batch_norm_elemt(x, weight, bias, mean, invstd, channel_axis=channel_axis)
    sum_dy, sum_dy_xhat = fo.batch_norm_backward_reduce(dy, x, mean, invstd,
                                                        channel_axis=channel_axis)
    return [y, mean, invstd, running_mean, running_var, dx, dweight, dbias, smean, m2, y2,
            sum_dy, sum_dy_xhat]


def _optimizer_calls(rng, big):
    """Steps of the optimizer classes (float32, bfloat16 with stochastic rounding, master
    weights) and the norms; the params, states and norms they leave."""
    sizes = (1, 15, 17, 1000, 4099) + ((1 << 18,) if big else ())
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    out = []
    for cls, kw in ((fo.optim.SGD, {"momentum": 0.9, "nesterov": True}),
                    (fo.optim.Adam, {"amsgrad": True}), (fo.optim.AdamW, {})):
        ps = [p.copy() for p in params]
        opt = cls(ps, lr=1e-2, **kw)
        for _ in range(3):
            opt.step(grads)
        out += ps
    bf_grads = [g.astype(BF16) for g in grads]
    sr = [p.astype(BF16) for p in params]
    opt = fo.optim.Adam(sr, lr=1e-2, stochastic_rounding=True, seed=7)
    opt.step(bf_grads)
    master = [p.astype(BF16) for p in params]
    opt = fo.optim.Adam(master, lr=1e-2, master_weights=True)
    opt.step(bf_grads)
    clipped = [g.copy() for g in grads]
    norm = fo.clip_grad_norm(clipped, 1.0)
    out += [p.view(np.uint16) for p in sr + master] + clipped
    out += [np.array([norm, fo.grad_norm(grads), float(fo.all_finite(bf_grads))])]
    return out


# Shapes that take the different batch-norm plans: (N, C) rows, short and long spatial
# extents channel-first, channel-last, one channel; the large ones run in parallel.
_SHAPES = [((2, 7), 1), ((64, 256), 1), ((8, 33, 5, 3), 1), ((4, 5, 6, 16), -1),
           ((300, 17), 1), ((3, 1000), 1), ((5, 1, 9), 1)]
_LARGE_SHAPES = [((16, 64, 28, 28), 1), ((512, 1024), 1), ((8, 28, 28, 64), -1)]


def _workload(seed, rounds):
    rng = np.random.default_rng(seed)
    results = []
    for r in range(rounds):
        for dtype in (np.float32, np.float64, BF16, np.float16):
            shapes = _SHAPES + (_LARGE_SHAPES if r == 0 and dtype != np.float64 else [])
            for shape, axis in shapes:
                results += _batch_norm_calls(rng, dtype, shape, axis)
        results += _optimizer_calls(rng, big=r == 0)
    return results


def _run_threads(workers, rounds, toggle):
    results, errors = {}, []
    done = threading.Event()

    def work(seed):
        try:
            results[seed] = _workload(seed, rounds)
        except BaseException as e:  # reported below, on the test's thread
            errors.append(e)

    def toggler():
        k = 0
        while not done.is_set():
            fo.set_num_threads(1 + k % 2)
            k += 1
            done.wait(0.002)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(workers)]
    changer = threading.Thread(target=toggler) if toggle else None
    if changer:
        changer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    if changer:
        changer.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("toggle", [False, True], ids=["fixed-threads", "changing-threads"])
def test_concurrent_calls_give_the_bits_of_serial_calls(toggle):
    threads_before = fo.get_num_threads()
    try:
        fo.set_num_threads(2)
        concurrent = _run_threads(workers=3, rounds=2, toggle=toggle)
    finally:
        fo.set_num_threads(threads_before)
    for seed in range(3):
        serial = _workload(seed, rounds=2)
        assert len(concurrent[seed]) == len(serial)
        for got, want in zip(concurrent[seed], serial):
            assert_bitwise_equal(got, want)
