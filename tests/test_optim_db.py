"""torch's own optimizer test matrix (optim_db in torch.testing._internal.common_optimizers)
run against the fo.optim class of the same name: every config (tensor lrs as floats), 12
steps, float64, params of several shapes. Skipped when torch or its test helpers (which
need the expecttest package) are not importable."""

import warnings

import numpy as np
import pytest

import fusedops as fo

NAMES = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam"]
TORCH_ONLY = {"foreach", "fused", "capturable", "differentiable"}


def _optim_db_configs():
    try:
        import torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.testing._internal.common_optimizers import optim_db
    except Exception:  # torch absent, or its test helpers' dependencies (expecttest)
        return []
    out = []
    for info in optim_db:
        name = info.optim_cls.__name__
        if name not in NAMES:
            continue
        for inp in info.optim_inputs_func(device="cpu", dtype=torch.float64):
            if inp.params is not None or TORCH_ONLY & inp.kwargs.keys():
                continue
            out.append(pytest.param(name, inp.kwargs, id=f"{name}-{inp.desc}"))
    return out


CONFIGS = _optim_db_configs()


@pytest.mark.skipif(not CONFIGS, reason="torch.testing._internal.common_optimizers not importable")
@pytest.mark.parametrize("name, kwargs", CONFIGS or [pytest.param(None, None, id="none")])
def test_optim_db_config_matches_torch(name, kwargs):
    import torch

    rng = np.random.default_rng(5)
    shapes = [(), (3,), (17,), (4, 33)]
    params = [np.array(rng.standard_normal(s)) for s in shapes]
    grads = [[np.array(rng.standard_normal(s)) for s in shapes] for _ in range(12)]
    ours_kwargs = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # scalar state (NAdam's mu_product) in float64
    try:
        tp = [torch.from_numpy(p.copy()) for p in params]
        topt = getattr(torch.optim, name)(tp, foreach=False, **kwargs)
        for step_grads in grads:
            for p, g in zip(tp, step_grads):
                p.grad = torch.from_numpy(g.copy())
            topt.step()
    finally:
        torch.set_default_dtype(previous)
    opt = getattr(fo.optim, name)(params, **ours_kwargs)
    for step_grads in grads:
        assert opt.step(step_grads)
    for a, b in zip(params, tp):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)
