"""Optimizer cases: SGD, Adam/AdamW, clip_grad_norm, the optimizer classes, the optimizer
family (Adagrad, RMSprop, Adamax, NAdam, RAdam, Lion) and LAMB/LARS."""

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

    # The master-weights flow's peer is torch's float32 step plus the copy into bf16 params.
    baseline = "torch-fused+copy" if flow == "master-f32-bf16-grads-copy" else "torch-fused"
    return Case("adam_step", f"{flow} ({traffic} B/el)", "bfloat16", int(sum(sizes)), len(sizes),
                traffic, build, rtol=2e-2, atol=2e-2, baseline=baseline)


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


# ---------------------------------------------------------------- the optimizer family

# kind -> (torch class, torch peer modes, state names, hyperparameters, bytes/element in units
# of the element size: reads + writes of one step). L2 weight decay stays off: the checked
# first step of these is nearly sign(g + wd p), which float32 cannot resolve where the sum
# cancels.
FAMILY = {
    "adagrad": ("Adagrad", ("fused", "foreach"), ("sum",), dict(lr=1e-2), 5),
    "rmsprop": ("RMSprop", ("foreach",), ("square_avg",), dict(lr=1e-2), 5),
    "adamax": ("Adamax", ("foreach",), ("exp_avg", "exp_inf"), dict(lr=2e-3), 7),
    "nadam": ("NAdam", ("foreach",), ("exp_avg", "exp_avg_sq"), dict(lr=2e-3), 7),
    "radam": ("RAdam", ("foreach",), ("exp_avg", "exp_avg_sq"),
              dict(lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True), 7),
    "lion": (None, (), ("exp_avg",), dict(lr=1e-4, weight_decay=1e-2), 5),
}


def family_bytes_note() -> str:
    """The traffic models of the family rows, for the benchmark's header."""
    kinds = ", ".join(f"{kind} {FAMILY[kind][4]}" for kind in FAMILY)
    return f"bytes/element: {kinds}, LAMB 10 and LARS 7 (two passes) (x itemsize)"


def _family_numpy(kind, hp):
    """One step of `kind` in NumPy with in-place ufuncs (float32 or float64 arrays): the
    NumPy row, and, on float64 copies, the reference."""
    wd = hp.get("weight_decay", 0.0)

    def step(params, grads, states, t):
        for p, g, st in zip(params, grads, states):
            if kind in ("radam", "lion") and wd:
                p *= 1 - hp["lr"] * wd
                d = g
            else:
                d = g + wd * p
            if kind == "adagrad":
                st["sum"] += d * d
                p -= hp["lr"] * d / (np.sqrt(st["sum"]) + 1e-10)
            elif kind == "rmsprop":
                sq = st["square_avg"]
                sq *= 0.99
                sq += 0.01 * d * d
                p -= hp["lr"] * d / (np.sqrt(sq) + 1e-8)
            elif kind == "lion":
                m = st["exp_avg"]
                p -= hp["lr"] * np.sign(0.9 * m + 0.1 * d)
                m *= 0.99
                m += 0.01 * d
            else:
                m = st["exp_avg"]
                m *= 0.9
                m += 0.1 * d
                if kind == "adamax":
                    u = st["exp_inf"]
                    np.maximum(u * 0.999, np.abs(d) + 1e-8, out=u)
                    p -= hp["lr"] / (1 - 0.9**t) * m / u
                    continue
                v = st["exp_avg_sq"]
                v *= 0.999
                v += 0.001 * d * d
                bc1, bc2 = 1 - 0.9**t, 1 - 0.999**t
                if kind == "nadam":
                    prod = 1.0
                    for k in range(1, t + 1):
                        prod *= 0.9 * (1 - 0.5 * 0.96 ** (k * 4e-3))
                    mu, mu_next = (0.9 * (1 - 0.5 * 0.96 ** (k * 4e-3)) for k in (t, t + 1))
                    denom = np.sqrt(v / bc2) + 1e-8
                    p -= hp["lr"] * (1 - mu) / (1 - prod) * d / denom
                    p -= hp["lr"] * mu_next / (1 - prod * mu_next) * m / denom
                else:
                    rho_inf = 2 / (1 - 0.999) - 1
                    rho = rho_inf - 2 * t * 0.999**t / bc2
                    if rho > 5:
                        rect = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
                        p -= hp["lr"] * rect * np.sqrt(bc2) / bc1 * m / (np.sqrt(v) + 1e-8)
                    else:
                        p -= hp["lr"] / bc1 * m
    return step


def _family_functional(kind, hp, params, grads, states):
    """fusedops' functional step over the lists, with its own step counter."""
    names = FAMILY[kind][2]
    lists = [[st[k] for st in states] for k in names]
    count = [0, 1.0]  # step, NAdam's mu_product
    fn = getattr(fo, f"{kind}_step")

    def run():
        count[0] += 1
        if kind in ("rmsprop", "lion"):
            fn(params, grads, *lists, **hp)
        elif kind == "nadam":
            count[1] = fn(params, grads, *lists, step=count[0], mu_product=count[1], **hp)
        else:
            fn(params, grads, *lists, step=count[0], **hp)
    return run


def _zero_states(kind, params):
    return [{k: np.zeros_like(p) for k in FAMILY[kind][2]} for p in params]


def family_case(kind, sizes, dtype, through_class=False, name=None):
    """One step of a family optimizer from zero state (the checked first run is step 1);
    through_class: fo.optim.<Class>.step, else the functional step."""
    torch_name, modes, _, hp, arrays = FAMILY[kind]
    itemsize = np.dtype(dtype).itemsize

    def build():
        params, grads, _ = _arrays(sizes, dtype, 0, seed=7)
        ref_p = [p.astype(np.float64) for p in params]
        _family_numpy(kind, hp)(ref_p, [g.astype(np.float64) for g in grads], _zero_states(kind, ref_p), 1)
        impls = []
        fp = _copies(params)
        if through_class:
            opt = getattr(fo.optim, torch_name or kind.capitalize())(fp, **hp)
            impls.append(Impl("fusedops", lambda: opt.step(grads), lambda: fp))
        else:
            impls.append(Impl("fusedops", _family_functional(kind, hp, fp, grads, _zero_states(kind, fp)),
                              lambda: fp))
        npp = _copies(params)
        np_states, np_step, count = _zero_states(kind, npp), _family_numpy(kind, hp), [0]

        def run_numpy():
            count[0] += 1
            np_step(npp, grads, np_states, count[0])
        impls.append(Impl("numpy", run_numpy, lambda: npp))
        if torch is not None and torch_name is not None:
            for mode in modes:
                tp, topt = _torch_optimizer(getattr(torch.optim, torch_name), params, grads, lambda i: {}, mode, **hp)
                impls.append(Impl(f"torch-{mode}", topt.step, lambda tp=tp: [p.numpy() for p in tp]))
        return impls, ref_p

    label = name or ("x".join(map(str, sizes)) if len(sizes) == 1 else f"{len(sizes)} tensors")
    kernel = f"optim.{torch_name or 'Lion'}.step" if through_class else f"{kind}_step"
    baseline = f"torch-{modes[0]}" if modes else "numpy"
    return Case(kernel, label, np.dtype(dtype).name, int(sum(sizes)), len(sizes), arrays * itemsize, build,
                rtol=1e-4, atol=1e-5, baseline=baseline)


# ---------------------------------------------------------------- LAMB and LARS

def gpt2_sizes(layers=12, width=768, vocab=50257, context=1024):
    """The parameter list of GPT-2 (small: 148 tensors, 124M values), in module order."""
    sizes = [vocab * width, context * width]
    for _ in range(layers):
        sizes += [width, width, width * 3 * width, 3 * width, width * width, width,
                  width, width, width * 4 * width, 4 * width, 4 * width * width, width]
    return sizes + [width, width]


def _lamb_numpy(params, grads, ms, vs, lr, wd, t, eps=1e-6):
    """LAMB (You et al. 2019) in NumPy, one tensor at a time; returns the trust ratios."""
    ratios = []
    for p, g, m, v in zip(params, grads, ms, vs):
        m *= 0.9
        m += 0.1 * g
        v *= 0.999
        v += 0.001 * g * g
        u = (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + eps) + wd * p
        pn, un = np.linalg.norm(p), np.linalg.norm(u)
        ratio = pn / un if pn > 0 and un > 0 else 1.0
        p -= lr * ratio * u
        ratios.append(ratio)
    return ratios


def _torch_lamb(tp, tg, tm, tv, lr, wd, count, eps=1e-6):
    """timm's Lamb algorithm (a per-tensor loop of torch ops), without its grad clipping."""
    def run():
        count[0] += 1
        t = count[0]
        with torch.no_grad():
            for p, g, m, v in zip(tp, tg, tm, tv):
                m.mul_(0.9).add_(g, alpha=0.1)
                v.mul_(0.999).addcmul_(g, g, value=0.001)
                denom = (v.sqrt() / (1 - 0.999**t) ** 0.5).add_(eps)
                update = (m / (1 - 0.9**t)).div_(denom).add_(p, alpha=wd)
                w_norm, u_norm = p.norm(2.0), update.norm(2.0)
                one = torch.ones_like(w_norm)
                ratio = torch.where(w_norm > 0, torch.where(u_norm > 0, w_norm / u_norm, one), one)
                p.add_(update * ratio, alpha=-lr)
    return run


def lamb_case(sizes, dtype, name, with_numpy=True):
    """LAMB through fo.optim.LAMB: the two-pass scheme moves 10 elements per value (pass 1
    reads p, g, m, v and writes m, v; pass 2 reads p, m, v and writes p)."""
    itemsize = np.dtype(dtype).itemsize
    lr, wd = 1e-3, 1e-2

    def build():
        params, grads, _ = _arrays(sizes, dtype, 0, seed=8)
        ref_p = [p.astype(np.float64) for p in params]
        for p, g in zip(ref_p, grads):  # one tensor at a time: GPT-2's float64 state is 2 GB
            _lamb_numpy([p], [g.astype(np.float64)], [np.zeros_like(p)], [np.zeros_like(p)], lr, wd, 1)
        impls = []
        fp = _copies(params)
        opt = fo.optim.LAMB(fp, lr=lr, weight_decay=wd)
        impls.append(Impl("fusedops", lambda: opt.step(grads), lambda: fp))
        if with_numpy:
            npp = _copies(params)
            nm, nv, count = [np.zeros_like(p) for p in npp], [np.zeros_like(p) for p in npp], [0]

            def run_numpy():
                count[0] += 1
                _lamb_numpy(npp, grads, nm, nv, lr, wd, count[0])
            impls.append(Impl("numpy", run_numpy, lambda: npp))
        if torch is not None:
            tp, tg = _torch_tensors(params), [torch.from_numpy(g) for g in grads]
            tm, tv = [torch.zeros_like(p) for p in tp], [torch.zeros_like(p) for p in tp]
            impls.append(Impl("torch-timm-lamb", _torch_lamb(tp, tg, tm, tv, lr, wd, [0]),
                              lambda: [p.numpy() for p in tp]))
        return impls, ref_p

    return Case("optim.LAMB.step", name, np.dtype(dtype).name, int(sum(sizes)), len(sizes), 10 * itemsize,
                build, rtol=1e-4, atol=1e-5, baseline="torch-timm-lamb" if torch is not None else "numpy")


def _torch_lars(tp, tg, tb, lr, momentum, wd, eta, first):
    """timm's Lars algorithm (a per-tensor loop of torch ops; always adapting)."""
    def run():
        with torch.no_grad():
            for p, g, b in zip(tp, tg, tb):
                w_norm, g_norm = p.norm(2.0), g.norm(2.0)
                one = torch.ones_like(w_norm)
                ratio = torch.where(w_norm > 0, torch.where(g_norm > 0, eta * w_norm / (g_norm + wd * w_norm + 1e-8),
                                                            one), one)
                d = g.add(p, alpha=wd).mul_(ratio)
                if first[0]:
                    b.copy_(d)
                else:
                    b.mul_(momentum).add_(d)
                p.add_(b, alpha=-lr)
        first[0] = False
    return run


def lars_case(sizes, dtype, name):
    """LARS through fo.optim.LARS: pass 1 reads p and g (norms), pass 2 is SGD with momentum
    (reads p, g, buf; writes p, buf): 7 elements per value."""
    itemsize = np.dtype(dtype).itemsize
    lr, momentum, wd, eta = 0.1, 0.9, 1e-4, 1e-3

    def build():
        params, grads, _ = _arrays(sizes, dtype, 0, seed=9)
        ref_p = []
        for p, g in zip(params, grads):
            p, g = p.astype(np.float64), g.astype(np.float64)
            pn, gn = np.linalg.norm(p), np.linalg.norm(g)
            ratio = eta * pn / (gn + wd * pn + 1e-8) if pn > 0 and gn > 0 else 1.0
            ref_p.append(p - lr * ratio * (g + wd * p))
        impls = []
        fp = _copies(params)
        opt = fo.optim.LARS(fp, lr=lr, momentum=momentum, weight_decay=wd, eta=eta)
        impls.append(Impl("fusedops", lambda: opt.step(grads), lambda: fp))
        npp, nb, first = _copies(params), [np.zeros_like(p) for p in params], [True]

        def run_numpy():
            for p, g, b in zip(npp, grads, nb):
                pn, gn = np.linalg.norm(p), np.linalg.norm(g)
                ratio = eta * pn / (gn + wd * pn + 1e-8) if pn > 0 and gn > 0 else 1.0
                d = (g + wd * p) * ratio
                if first[0]:
                    b[...] = d
                else:
                    b *= momentum
                    b += d
                p -= lr * b
            first[0] = False
        impls.append(Impl("numpy", run_numpy, lambda: npp))
        if torch is not None:
            tp, tg = _torch_tensors(params), [torch.from_numpy(g) for g in grads]
            tb = [torch.zeros_like(p) for p in tp]
            impls.append(Impl("torch-timm-lars", _torch_lars(tp, tg, tb, lr, momentum, wd, eta, [True]),
                              lambda: [p.numpy() for p in tp]))
        return impls, ref_p

    return Case("optim.LARS.step", name, np.dtype(dtype).name, int(sum(sizes)), len(sizes), 7 * itemsize,
                build, rtol=1e-4, atol=1e-5, baseline="torch-timm-lars" if torch is not None else "numpy")


def family_cases(quick: bool):
    """Each family optimizer at 16M float32 (functional) and 1000 x 256 (class); LAMB on
    GPT-2 small's parameter list (a 2-layer, 8k-vocabulary cut in the quick run)."""
    f32 = np.float32
    cases = [family_case(kind, [1 << 24], f32) for kind in FAMILY]
    cases += [family_case(kind, [256] * 1000, f32, through_class=True, name="1000x256") for kind in FAMILY]
    if quick:
        cases.append(lamb_case(gpt2_sizes(layers=2, vocab=8192), f32, "gpt2-2layer-8k", with_numpy=False))
    else:
        cases.append(lamb_case(gpt2_sizes(), f32, "gpt2-small", with_numpy=False))
        cases.append(lars_case([1 << 24], f32, "16777216"))
        cases.append(lars_case(gpt2_sizes(layers=2, vocab=8192), f32, "gpt2-2layer-8k"))
    return cases


# ---------------------------------------------------------------- the case lists

SWEEP = [1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 24, 1 << 26]


# The model of examples/train_mlp_digits.py (64 -> 256 -> 256 -> 10, batch norm after
# the hidden layers): eight tensors, 85K values, in the L2: a step's cost there is
# mostly per-call and per-tensor work, not bytes.
DIGITS_MLP = [64 * 256, 256, 256, 256 * 256, 256, 256, 256 * 10, 10]


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
            cases.append(adam_class_case(DIGITS_MLP, f32, "digits-mlp"))
        return cases + mixed_cases() + family_cases(quick)
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
                  adam_class_case(DIGITS_MLP, f32, "digits-mlp"),
                  adam_class_case([256] * 1000, f64, "1000x256"),
                  adam_class_case(transformer_sizes(), f32, "transformer-12x768")]
    return cases + mixed_cases() + family_cases(quick)
