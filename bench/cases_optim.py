"""Optimizer cases: SGD, Adam/AdamW, clip_grad_norm and the optimizer classes."""

from __future__ import annotations

import functools

import numpy as np

import fusedops as fo
import harness
from harness import Case, Impl, numba, torch

# ---------------------------------------------------------------- array sets


def _arrays(sizes, dtype, n_state, seed=0):
    """params, grads and n_state state lists (the last state non-negative, Adam's v)."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
    states = []
    for k in range(n_state):
        s = [rng.standard_normal(n).astype(dtype) * 0.1 for n in sizes]
        if k >= 1:
            s = [np.abs(x) * 0.1 for x in s]
        states.append(s)
    return params, grads, states


def _copies(arrays):
    return [a.copy() for a in arrays]


def _torch_tensors(arrays):
    return [torch.from_numpy(a.copy()) for a in arrays]


# ---------------------------------------------------------------- SGD

SGD_VARIANTS = {
    "plain": dict(lr=1e-2),
    "momentum": dict(lr=1e-2, momentum=0.9, weight_decay=1e-4),
    "nesterov": dict(lr=1e-2, momentum=0.9, weight_decay=1e-4, nesterov=True),
}


def _sgd_reference(params, grads, bufs, hp):
    out = []
    for p, g, b in zip(params, grads, bufs):
        p = p.astype(np.float64)
        d = g.astype(np.float64) + hp.get("weight_decay", 0.0) * p
        if hp.get("momentum", 0.0):
            b = hp["momentum"] * b.astype(np.float64) + d
            d = d + hp["momentum"] * b if hp.get("nesterov") else b
        out.append(p - hp["lr"] * d)
    return out


def _numpy_sgd(params, grads, bufs, hp):
    """The best plain NumPy: in-place ufuncs into preallocated temporaries."""
    lr, mom = hp["lr"], hp.get("momentum", 0.0)
    wd, nesterov = hp.get("weight_decay", 0.0), hp.get("nesterov", False)
    tmps = [np.empty_like(p) for p in params]
    tmps2 = [np.empty_like(p) for p in params] if nesterov else tmps

    def run():
        for p, g, b, t, t2 in zip(params, grads, bufs, tmps, tmps2):
            if not mom and not wd:
                np.multiply(g, lr, out=t)
                p -= t
                continue
            np.multiply(p, wd, out=t)  # t = d = g + wd * p
            t += g
            if mom:
                b *= mom
                b += t
                if nesterov:
                    np.multiply(b, mom, out=t2)
                    t += t2
                else:
                    t, spare = b, t
                    np.multiply(t, lr, out=spare)
                    p -= spare
                    continue
            t *= lr
            p -= t
    return run


def _torch_optimizer(cls, params, grads, states, mode, **hp):
    tp = _torch_tensors(params)
    for p, g in zip(tp, _torch_tensors(grads)):
        p.grad = g
    flags = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[mode]
    opt = cls(tp, **hp, **flags)
    for i, p in enumerate(tp):
        opt.state[p].update(states(i))
    return tp, opt


@functools.lru_cache(maxsize=None)
def _numba_sgd():
    @numba.njit(parallel=True, fastmath=False, cache=False)
    def kernel(p, g, b, lr, mom, wd, nesterov):
        for i in numba.prange(p.size):
            d = g[i] + wd * p[i]
            if mom != 0:
                b[i] = mom * b[i] + d
                d = d + mom * b[i] if nesterov else b[i]
            p[i] = p[i] - lr * d
    return kernel


def sgd_case(sizes, dtype, variant):
    hp = SGD_VARIANTS[variant]
    itemsize = np.dtype(dtype).itemsize
    traffic = (5 if hp.get("momentum") else 3) * itemsize

    def build():
        params, grads, (bufs,) = _arrays(sizes, dtype, 1)
        reference = _sgd_reference(params, grads, bufs, hp)
        impls = []
        fp, fb = _copies(params), _copies(bufs)
        impls.append(Impl("fusedops", lambda: fo.sgd_step(fp, grads, fb, **hp), lambda: fp))
        npp, npb = _copies(params), _copies(bufs)
        impls.append(Impl("numpy", _numpy_sgd(npp, grads, npb, hp), lambda: npp))
        if torch is not None:
            for mode in ("fused", "foreach", "for-loop"):
                tp, opt = _torch_optimizer(torch.optim.SGD, params, grads,
                                           lambda i: {"momentum_buffer": torch.from_numpy(bufs[i].copy())},
                                           mode, **hp)
                impls.append(Impl(f"torch-{mode}", opt.step, lambda tp=tp: [p.numpy() for p in tp]))
        if numba is not None:
            kernel = _numba_sgd()
            nbp, nbb = _copies(params), _copies(bufs)
            args = (hp["lr"], hp.get("momentum", 0.0), hp.get("weight_decay", 0.0), hp.get("nesterov", False))

            def run_numba():
                for p, g, b in zip(nbp, grads, nbb):
                    kernel(p, g, b, *args)
            impls.append(Impl("numba", run_numba, lambda: nbp))
        return impls, reference

    return Case("sgd_step", variant, np.dtype(dtype).name, int(sum(sizes)), len(sizes), traffic, build,
                baseline="torch-fused")


# ---------------------------------------------------------------- Adam

def _adam_reference(params, grads, ms, vs, vmaxs, hp, step):
    b1, b2 = hp.get("betas", (0.9, 0.999))
    lr, eps, wd = hp.get("lr", 1e-3), hp.get("eps", 1e-8), hp.get("weight_decay", 0.0)
    out = []
    for i, (p, g, m, v) in enumerate(zip(params, grads, ms, vs)):
        p, g, m, v = (a.astype(np.float64) for a in (p, g, m, v))
        if hp.get("decoupled"):
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if hp.get("amsgrad"):
            v = np.maximum(vmaxs[i].astype(np.float64), v)
        denom = np.sqrt(v) / np.sqrt(1 - b2**step) + eps
        out.append(p - lr / (1 - b1**step) * m / denom)
    return out


def _numpy_adam(params, grads, ms, vs, vmaxs, hp, step_box):
    b1, b2 = hp.get("betas", (0.9, 0.999))
    lr, eps, wd = hp.get("lr", 1e-3), hp.get("eps", 1e-8), hp.get("weight_decay", 0.0)
    decoupled, amsgrad = hp.get("decoupled", False), hp.get("amsgrad", False)
    tmps = [np.empty_like(p) for p in params]
    tmps2 = [np.empty_like(p) for p in params]

    def run():
        step_box[0] += 1
        step = step_box[0]
        step_size = lr / (1 - b1**step)
        inv_bc2 = 1 / np.sqrt(1 - b2**step)
        for i, (p, g, m, v, t, t2) in enumerate(zip(params, grads, ms, vs, tmps, tmps2)):
            d = g
            if wd and decoupled:
                p *= 1 - lr * wd
            elif wd:
                np.multiply(p, wd, out=t)
                t += g
                d = t
            m *= b1
            np.multiply(d, 1 - b1, out=t2)
            m += t2
            v *= b2
            np.multiply(d, d, out=t2)
            t2 *= 1 - b2
            v += t2
            second = v
            if amsgrad:
                np.maximum(vmaxs[i], v, out=vmaxs[i])
                second = vmaxs[i]
            np.sqrt(second, out=t)
            t *= inv_bc2
            t += eps
            np.divide(m, t, out=t)
            t *= step_size
            p -= t
    return run


@functools.lru_cache(maxsize=None)
def _numba_adam():
    @numba.njit(parallel=True, fastmath=False, cache=False)
    def kernel(p, g, m, v, vmax, b1, b2, step_size, inv_bc2, eps, wd, decay, amsgrad):
        for i in numba.prange(p.size):
            pi = p[i] * decay
            d = g[i] + wd * pi
            m[i] = b1 * m[i] + (1 - b1) * d
            v[i] = b2 * v[i] + (1 - b2) * d * d
            s = v[i]
            if amsgrad:
                s = max(vmax[i], s)
                vmax[i] = s
            p[i] = pi - step_size * (m[i] / (np.sqrt(s) * inv_bc2 + eps))
    return kernel


ADAM_VARIANTS = {
    "adam": dict(lr=1e-3),
    "adamw-amsgrad": dict(lr=1e-3, weight_decay=1e-2, decoupled=True, amsgrad=True),
}


def adam_case(sizes, dtype, variant, step0=10):
    hp = ADAM_VARIANTS[variant]
    amsgrad = hp.get("amsgrad", False)
    itemsize = np.dtype(dtype).itemsize
    traffic = (9 if amsgrad else 7) * itemsize
    kernel_name = "adamw_step" if hp.get("decoupled") else "adam_step"
    fo_fn = fo.adamw_step if hp.get("decoupled") else fo.adam_step
    fo_hp = dict(lr=hp["lr"], weight_decay=hp.get("weight_decay", 0.0), amsgrad=amsgrad)
    torch_cls = None
    if torch is not None:
        torch_cls = torch.optim.AdamW if hp.get("decoupled") else torch.optim.Adam

    def build():
        params, grads, (ms, vs, vmaxs) = _arrays(sizes, dtype, 3)
        vmaxs = [np.maximum(v, x) for v, x in zip(vs, vmaxs)]
        reference = _adam_reference(params, grads, ms, vs, vmaxs, hp, step0 + 1)
        impls = []
        fp, fm, fv, fx = (_copies(a) for a in (params, ms, vs, vmaxs))
        fo_step = [step0]

        def run_fo():
            fo_step[0] += 1
            fo_fn(fp, grads, fm, fv, step=fo_step[0], max_exp_avg_sqs=fx if amsgrad else None, **fo_hp)
        impls.append(Impl("fusedops", run_fo, lambda: fp))
        npp, npm, npv, npx = (_copies(a) for a in (params, ms, vs, vmaxs))
        impls.append(Impl("numpy", _numpy_adam(npp, grads, npm, npv, npx, hp, [step0]), lambda: npp))
        if torch is not None:
            def state(i):
                s = {"step": torch.tensor(float(step0)), "exp_avg": torch.from_numpy(ms[i].copy()),
                     "exp_avg_sq": torch.from_numpy(vs[i].copy())}
                if amsgrad:
                    s["max_exp_avg_sq"] = torch.from_numpy(vmaxs[i].copy())
                return s
            for mode in ("fused", "foreach", "for-loop"):
                tp, opt = _torch_optimizer(torch_cls, params, grads, state, mode, lr=hp["lr"],
                                           weight_decay=hp.get("weight_decay", 0.0), amsgrad=amsgrad)
                impls.append(Impl(f"torch-{mode}", opt.step, lambda tp=tp: [p.numpy() for p in tp]))
        if numba is not None:
            kernel = _numba_adam()
            nbp, nbm, nbv, nbx = (_copies(a) for a in (params, ms, vs, vmaxs))
            nb_step = [step0]
            b1, b2 = 0.9, 0.999
            lr, wd = hp["lr"], hp.get("weight_decay", 0.0)

            def run_numba():
                nb_step[0] += 1
                s = nb_step[0]
                decay = 1 - lr * wd if hp.get("decoupled") else 1.0
                l2 = 0.0 if hp.get("decoupled") else wd
                for p, g, m, v, x in zip(nbp, grads, nbm, nbv, nbx):
                    kernel(p, g, m, v, x, b1, b2, lr / (1 - b1**s), 1 / np.sqrt(1 - b2**s), 1e-8, l2, decay, amsgrad)
            impls.append(Impl("numba", run_numba, lambda: nbp))
        return impls, reference

    return Case(kernel_name, variant, np.dtype(dtype).name, int(sum(sizes)), len(sizes), traffic, build,
                rtol=1e-4, atol=1e-5, baseline="torch-fused")


# ---------------------------------------------------------------- clip_grad_norm

def clip_case(sizes, dtype):
    itemsize = np.dtype(dtype).itemsize

    def build():
        _, grads, _ = _arrays(sizes, dtype, 0, seed=3)
        total = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
        max_norm = 0.5 * total
        coef = max_norm / (total + 1e-6)
        reference = [g.astype(np.float64) * coef for g in grads]
        impls = []

        def restorer(targets):
            def prepare():
                for t, g in zip(targets, grads):
                    np.copyto(t, g)
            return prepare
        fg = _copies(grads)
        impls.append(Impl("fusedops", lambda: fo.clip_grad_norm(fg, max_norm), lambda: fg, restorer(fg)))
        ng = _copies(grads)

        def run_numpy():
            norm = np.sqrt(sum(float(np.vdot(g, g)) for g in ng))
            c = max_norm / (norm + 1e-6)
            if c < 1:
                for g in ng:
                    g *= c
        impls.append(Impl("numpy", run_numpy, lambda: ng, restorer(ng)))
        if torch is not None:
            for mode, foreach in (("foreach", True), ("for-loop", False)):
                tp = _torch_tensors(grads)
                for p, g in zip(tp, _torch_tensors(grads)):
                    p.grad = g
                views = [p.grad.numpy() for p in tp]
                impls.append(Impl(f"torch-{mode}",
                                  lambda tp=tp, f=foreach: torch.nn.utils.clip_grad_norm_(tp, max_norm, foreach=f),
                                  lambda v=views: v, restorer(views)))
        return impls, reference

    return Case("clip_grad_norm", "l2", np.dtype(dtype).name, int(sum(sizes)), len(sizes), 3 * itemsize, build,
                baseline="torch-foreach")


# ---------------------------------------------------------------- optimizer classes

def transformer_sizes(layers=12, width=768):
    sizes = []
    for _ in range(layers):
        sizes += [width * 3 * width, 3 * width, width * width, width,  # attention qkv, proj
                  width * 4 * width, 4 * width, 4 * width * width, width,  # MLP
                  width, width, width, width]  # two layer norms
    return sizes


def adam_class_case(sizes, dtype, name):
    itemsize = np.dtype(dtype).itemsize

    def build():
        params, grads, _ = _arrays(sizes, dtype, 0, seed=5)
        lr = 1e-3
        # after one step from zero state, Adam moves every param by lr * g / (|g| + eps')
        reference = [p.astype(np.float64) - lr * g / (np.abs(g.astype(np.float64)) + 1e-8)
                     for p, g in zip(params, grads)]
        impls = []
        fp = _copies(params)
        opt = fo.optim.Adam(fp, lr=lr)
        impls.append(Impl("fusedops", lambda: opt.step(grads), lambda: fp))
        fs = _copies(params)
        ms, vs = [np.zeros_like(p) for p in fs], [np.zeros_like(p) for p in fs]
        fs_step = [0]

        def run_functional():
            fs_step[0] += 1
            fo.adam_step(fs, grads, ms, vs, step=fs_step[0], lr=lr)
        impls.append(Impl("fusedops-functional", run_functional, lambda: fs))
        npp = _copies(params)
        impls.append(Impl("numpy", _numpy_adam(npp, grads, [np.zeros_like(p) for p in npp],
                                               [np.zeros_like(p) for p in npp], None, {"lr": lr}, [0]),
                          lambda: npp))
        if torch is not None:
            for mode in ("fused", "foreach"):
                tp, topt = _torch_optimizer(torch.optim.Adam, params, grads, lambda i: {}, mode, lr=lr)
                impls.append(Impl(f"torch-{mode}", topt.step, lambda tp=tp: [p.numpy() for p in tp]))
        return impls, reference

    return Case("optim.Adam.step", name, np.dtype(dtype).name, int(sum(sizes)), len(sizes), 7 * itemsize, build,
                rtol=1e-4, atol=1e-5, baseline="torch-fused")


# ---------------------------------------------------------------- mixed precision

BF16 = np.dtype(fo.bfloat16)
# Per flow: (params, grads, state, param copy, bytes per element). Bytes count each array
# read (grads) or read and written (params, state, remainder) once per direction.
MIXED_ADAM_FLOWS = {
    "bf16-all": (BF16, BF16, BF16, None, 14),              # 2+2 + 2 (g) + 2*(2+2)
    "bf16-params-f32-state": (BF16, BF16, np.float32, None, 22),
    "master-f32-bf16-grads-copy": (np.float32, BF16, np.float32, BF16, 28),
    "remainder-bf16-f32-state": (BF16, BF16, np.float32, "remainder", 26),  # 22 + 2+2
}


def mixed_adam_case(sizes, flow, step0=10):
    pdt, gdt, sdt, copy, traffic = MIXED_ADAM_FLOWS[flow]
    hp = dict(lr=1e-3)

    def build():
        params, grads, (ms, vs) = _arrays(sizes, np.float32, 2)
        params = [p.astype(pdt) for p in params]
        grads = [g.astype(gdt) for g in grads]
        ms, vs = [m.astype(sdt) for m in ms], [v.astype(sdt) for v in vs]
        reference = _adam_reference(params, grads, ms, vs, None, hp, step0 + 1)
        impls = []
        if copy == "remainder":
            fp = _copies(params)
            opt = fo.optim.Adam(fp, lr=hp["lr"], master_weights="remainder")
            for st, m, v in zip(opt.state, ms, vs):
                st["exp_avg"], st["exp_avg_sq"] = m.copy(), v.copy()
            opt._step = step0
            impls.append(Impl("fusedops", lambda: opt.step(grads), lambda: fp))
        else:
            for name, stochastic in (("fusedops", False), ("fusedops-stochastic", True)):
                if stochastic and pdt != BF16 and sdt != BF16:
                    continue
                fp, fm, fv = _copies(params), _copies(ms), _copies(vs)
                fc = [np.zeros(p.shape, copy) for p in params] if copy is not None else None
                box = [step0]

                def run(fp=fp, fm=fm, fv=fv, fc=fc, box=box, stochastic=stochastic):
                    box[0] += 1
                    fo.adam_step(fp, grads, fm, fv, step=box[0], param_copies=fc,
                                 stochastic_rounding=stochastic, **hp)
                impls.append(Impl(name, run, lambda fp=fp: fp))
        if torch is not None and flow == "bf16-all":
            def state(i):
                return {"step": torch.tensor(float(step0)),
                        "exp_avg": torch.from_numpy(ms[i].astype(np.float32)).to(torch.bfloat16),
                        "exp_avg_sq": torch.from_numpy(vs[i].astype(np.float32)).to(torch.bfloat16)}
            tp = [torch.from_numpy(p.astype(np.float32)).to(torch.bfloat16) for p in params]
            for p, g in zip(tp, grads):
                p.grad = torch.from_numpy(g.astype(np.float32)).to(torch.bfloat16)
            opt_t = torch.optim.Adam(tp, fused=True, **hp)
            for i, p in enumerate(tp):
                opt_t.state[p].update(state(i))
            impls.append(Impl("torch-fused", opt_t.step,
                              lambda tp=tp: [p.float().numpy() for p in tp]))
        if torch is not None and flow == "master-f32-bf16-grads-copy":
            # torch's way: fused float32 Adam on the masters, then copy into bf16 model params
            tp = _torch_tensors(params)
            for p, g in zip(tp, grads):
                p.grad = torch.from_numpy(g.astype(np.float32))
            model = [torch.empty(p.shape, dtype=torch.bfloat16) for p in tp]
            opt_t = torch.optim.Adam(tp, fused=True, **hp)
            for i, p in enumerate(tp):
                opt_t.state[p].update({"step": torch.tensor(float(step0)),
                                       "exp_avg": torch.from_numpy(ms[i].copy()),
                                       "exp_avg_sq": torch.from_numpy(vs[i].copy())})

            def run_torch():
                opt_t.step()
                with torch.no_grad():
                    for m, p in zip(model, tp):
                        m.copy_(p)
            impls.append(Impl("torch-fused+copy", run_torch, lambda tp=tp: [p.numpy() for p in tp]))
        return impls, reference

    return Case("adam_step", f"{flow} ({traffic} B/el)", "bfloat16", int(sum(sizes)), len(sizes),
                traffic, build, rtol=2e-2, atol=2e-2, baseline="torch-fused")


def mixed_sgd_case(sizes):
    hp = SGD_VARIANTS["momentum"]
    traffic = 10  # bf16 params and buffer read and written, grads read

    def build():
        params, grads, (bufs,) = _arrays(sizes, np.float32, 1)
        params, grads, bufs = ([a.astype(BF16) for a in x] for x in (params, grads, bufs))
        reference = _sgd_reference(params, grads, bufs, hp)
        fp, fb = _copies(params), _copies(bufs)
        impls = [Impl("fusedops", lambda: fo.sgd_step(fp, grads, fb, **hp), lambda: fp)]
        if torch is not None:
            tp = [torch.from_numpy(p.astype(np.float32)).to(torch.bfloat16) for p in params]
            for p, g in zip(tp, grads):
                p.grad = torch.from_numpy(g.astype(np.float32)).to(torch.bfloat16)
            # torch 2.13's fused CPU SGD gives wrong bfloat16 results here (params left
            # unchanged in vector lanes): its foreach path is the peer.
            opt_t = torch.optim.SGD(tp, foreach=True, **hp)
            for p, b in zip(tp, bufs):
                opt_t.state[p]["momentum_buffer"] = torch.from_numpy(b.astype(np.float32)).to(torch.bfloat16)
            impls.append(Impl("torch-foreach", opt_t.step, lambda tp=tp: [p.float().numpy() for p in tp]))
        return impls, reference

    return Case("sgd_step", f"momentum bf16-all ({traffic} B/el)", "bfloat16", int(sum(sizes)),
                len(sizes), traffic, build, rtol=2e-2, atol=2e-2, baseline="torch-foreach")


def mixed_cases():
    big = harness.beyond_cache_elements
    cases = [mixed_adam_case([big(bpe)], flow) for flow, (*_, bpe) in MIXED_ADAM_FLOWS.items()]
    cases += [mixed_adam_case([256] * 1000, "bf16-all"), mixed_sgd_case([big(10)])]
    return cases


# ---------------------------------------------------------------- the case lists

SWEEP = [1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 24, 1 << 26]


def optim_cases(quick: bool):
    f32, f64 = np.float32, np.float64
    # Headline sizes run from DRAM: their traffic is at least twice the largest cache (16M
    # elements where the L3 is 32 MB; 64M where it is 480 MB).
    big = harness.beyond_cache_elements
    if quick:  # the headline rows of every optimizer kernel
        cases = [sgd_case([big(12)], f32, "momentum"), adam_case([big(28)], f32, "adam"),
                 adam_case([65536] * 10, f32, "adam"), adam_case([1 << 22], f32, "adamw-amsgrad"),
                 clip_case([65536] * 10 + [1 << 22], f32)]
        if hasattr(fo, "optim"):
            cases.append(adam_class_case([256] * 1000, f32, "1000x256"))
        return cases + mixed_cases()
    cases = [sgd_case([n], f32, "momentum") for n in SWEEP]
    cases += [sgd_case([big(8)], f32, "plain"), sgd_case([big(12)], f32, "nesterov"),
              sgd_case([big(24)], f64, "momentum")]
    cases += [adam_case([n], f32, "adam") for n in SWEEP]
    cases += [adam_case([65536] * 10, f32, "adam"), adam_case([big(36)], f32, "adamw-amsgrad"),
              adam_case([big(56)], f64, "adam"), adam_case([1 << 22], f64, "adamw-amsgrad")]
    cases += [clip_case([65536] * 10 + [1 << 22], f32), clip_case([big(24)], f64)]
    if hasattr(fo, "optim"):
        cases += [adam_class_case([256] * 1000, f32, "1000x256"),
                  adam_class_case([256000], f32, "1x256000"),
                  adam_class_case([256] * 1000, f64, "1000x256"),
                  adam_class_case(transformer_sizes(), f32, "transformer-12x768")]
    return cases + mixed_cases()
