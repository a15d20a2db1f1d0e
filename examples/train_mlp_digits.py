"""Train a NumPy MLP on scikit-learn's handwritten digits with fusedops in the loop.

The model is 64-256-256-10: two blocks of Dense -> BatchNorm -> ReLU and a Dense output
layer, trained with softmax cross-entropy. The dense layers' forward and backward are
plain NumPy matmuls (float32); ``fo.nn.BatchNorm`` does the normalization and one
``opt.step(grads)`` of ``fo.optim.Adam`` / ``AdamW`` / ``SGD`` updates every parameter per
batch. Weight decay applies to the dense weight matrices only (a second param group holds
the batch-norm scales/shifts and the output bias with ``weight_decay=0``); the learning
rate follows a cosine schedule by editing ``opt.param_groups``.

Every array the loop touches is allocated once: parameters and gradients live for the
whole run (the optimizer holds them), activations live in per-layer buffers sized for
the largest batch and each batch uses a leading slice of them.

The data set ships with scikit-learn (1797 8x8 images), nothing is downloaded.

    python examples/train_mlp_digits.py                     # Adam, 40 epochs
    python examples/train_mlp_digits.py --optimizer sgd --lr 0.1 --weight-decay 5e-4
    python examples/train_mlp_digits.py --optimizer adamw --max-grad-norm 1.0 --plot mlp.png

Data parallel over MPI ranks (needs mpi4py: ``pip install ".[dist]"``): each rank trains
on its slice of every batch, batch norm uses the statistics of the whole batch
(SyncBatchNorm) and the optimizer averages the grads over the ranks, so the run follows
the single-process one (up to rounding):

    mpiexec -n 2 python examples/train_mlp_digits.py --distributed
    mpiexec -n 2 python examples/train_mlp_digits.py --distributed --shard-state   # ZeRO-1
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np

import fusedops as fo
import fusedops.distributed as fod

DTYPE = np.float32


# ---------------------------------------------------------------- data

def load_digits_split(seed: int = 0, test_fraction: float = 0.25):
    """Digits scaled to [0, 1] as float32, split into stratified train and test sets."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(DTYPE)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (np.ascontiguousarray(x_train), y_train, np.ascontiguousarray(x_test), y_test)


# ---------------------------------------------------------------- layers

class Dense:
    """``y = x @ weight (+ bias)``; ``backward`` writes ``grad_weight`` (and ``grad_bias``).

    A Dense layer followed by batch norm has no bias: the normalization subtracts the
    per-feature mean, so a bias would receive a zero gradient (BatchNorm's shift is the bias).
    """

    def __init__(self, fan_in: int, fan_out: int, *, bias: bool, std: float,
                 rng: np.random.Generator):
        self.weight = (rng.standard_normal((fan_in, fan_out)) * std).astype(DTYPE)
        self.bias = np.zeros(fan_out, DTYPE) if bias else None
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = np.zeros_like(self.bias) if bias else None
        self._x = None  # the input of the last forward, read by backward

    def forward(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        self._x = x
        np.matmul(x, self.weight, out=out)
        if self.bias is not None:
            out += self.bias
        return out

    def backward(self, dy: np.ndarray, dx: np.ndarray | None) -> np.ndarray | None:
        np.matmul(self._x.T, dy, out=self.grad_weight)
        if self.bias is not None:
            np.sum(dy, axis=0, out=self.grad_bias)
        if dx is not None:
            np.matmul(dy, self.weight.T, out=dx)
        return dx


def _relu(z, out):
    return np.maximum(z, 0, out=out)


def _relu_grad(dy, y, out):
    return np.multiply(dy, y > 0, out=out)


def _sigmoid(z, out):
    np.negative(z, out=out)
    np.exp(out, out=out)
    out += 1
    return np.reciprocal(out, out=out)


def _sigmoid_grad(dy, y, out):  # sigmoid' = y (1 - y)
    np.subtract(1, y, out=out)
    out *= y
    return np.multiply(out, dy, out=out)


# name -> (forward(z, out), backward(dy, y, out)); derivatives are taken from the output.
ACTIVATIONS = {
    "relu": (_relu, _relu_grad),
    "sigmoid": (_sigmoid, _sigmoid_grad),
}


class MLP:
    """``sizes[0] -> ... -> sizes[-1]``: hidden blocks Dense -> [BatchNorm] -> activation,
    then a Dense output layer (logits).

    ``init_std(fan_in)`` gives the std of each weight matrix's normal init (default: He,
    ``sqrt(2 / fan_in)``). Buffers for ``capacity`` rows are allocated up front; forward and
    backward work on their first ``n`` rows.
    """

    def __init__(self, sizes, *, batch_norm: bool = True, activation: str = "relu",
                 init_std=None, capacity: int = 256, seed: int = 0, comm=None):
        rng = np.random.default_rng(seed)
        init_std = init_std or (lambda fan_in: math.sqrt(2.0 / fan_in))
        self.sizes = list(sizes)
        self.capacity = capacity
        self.act, self.act_grad = ACTIVATIONS[activation]
        hidden = self.sizes[1:-1]
        self.dense = [Dense(fan_in, fan_out, bias=not (batch_norm and i < len(hidden)),
                            std=init_std(fan_in), rng=rng)
                      for i, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:]))]
        self.norms = [fo.nn.BatchNorm(width, dtype=DTYPE, comm=comm) if batch_norm else None
                      for width in hidden]  # one per hidden block; synchronized with comm

        def buffers(with_bn=True):
            return [np.empty((capacity, width), DTYPE) if with_bn else None for width in hidden]

        # Per hidden block: dense output, batch-norm output, activation, and the gradients
        # of the loss w.r.t. each of them.
        self._z, self._bn, self._a = buffers(), buffers(batch_norm), buffers()
        self._dz, self._dbn, self._da = buffers(), buffers(batch_norm), buffers()
        self._logits = np.empty((capacity, self.sizes[-1]), DTYPE)
        self._probs = np.empty_like(self._logits)

    # ------------------------------------------------------------ parameters

    def parameters_and_gradients(self):
        """``[(param, grad, decay)]``: every parameter with its gradient buffer and whether
        weight decay should apply to it (dense weight matrices only)."""
        entries = []
        for i, dense in enumerate(self.dense):
            entries.append((dense.weight, dense.grad_weight, True))
            if dense.bias is not None:
                entries.append((dense.bias, dense.grad_bias, False))
            if i < len(self.norms) and self.norms[i] is not None:
                bn = self.norms[i]
                entries += [(p, g, False) for p, g in zip(bn.parameters(), bn.gradients())]
        return entries

    # ------------------------------------------------------------ forward / backward

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        """Logits for ``x`` (a view into an internal buffer, valid until the next call)."""
        n = x.shape[0]
        h = x
        for i, bn in enumerate(self.norms):
            z = self.dense[i].forward(h, out=self._z[i][:n])
            if bn is not None:
                z = bn.forward(z, training=training, out=self._bn[i][:n])
            h = self.act(z, out=self._a[i][:n])
        return self.dense[-1].forward(h, out=self._logits[:n])

    def backward(self, dlogits: np.ndarray) -> None:
        """Fills every gradient buffer from the gradient of the loss w.r.t. the logits."""
        n = dlogits.shape[0]
        dz = dlogits
        for i in range(len(self.norms) - 1, -1, -1):  # dense[i + 1] reads block i's output
            da = self.dense[i + 1].backward(dz, dx=self._da[i][:n])
            bn = self.norms[i]
            if bn is None:
                dz = self.act_grad(da, self._a[i][:n], out=self._dz[i][:n])
            else:
                dbn = self.act_grad(da, self._a[i][:n], out=self._dbn[i][:n])
                dz = bn.backward(dbn, out=self._dz[i][:n])
        self.dense[0].backward(dz, dx=None)  # the input needs no gradient

    def loss_and_grad(self, logits: np.ndarray, labels: np.ndarray, dlogits: np.ndarray) -> float:
        """Mean softmax cross-entropy; writes its gradient w.r.t. the logits into ``dlogits``."""
        n = logits.shape[0]
        probs = self._probs[:n]
        np.subtract(logits, logits.max(axis=1, keepdims=True), out=probs)
        np.exp(probs, out=probs)
        probs /= probs.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        loss = -float(np.mean(np.log(np.maximum(probs[rows, labels], 1e-30), dtype=np.float64)))
        np.copyto(dlogits, probs)
        dlogits[rows, labels] -= 1
        dlogits /= n
        return loss

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class predictions in inference mode (running statistics), in capacity-sized chunks."""
        out = np.empty(x.shape[0], np.int64)
        for start in range(0, x.shape[0], self.capacity):
            chunk = x[start:start + self.capacity]
            out[start:start + chunk.shape[0]] = self.forward(chunk, training=False).argmax(axis=1)
        return out


# ---------------------------------------------------------------- optimizer

def make_optimizer(model: MLP, name: str, lr: float, weight_decay: float,
                   max_grad_norm: float | None, comm=None, shard_state: bool = False):
    """The optimizer over two param groups (decayed, not decayed) and the grads list
    aligned with its params in group order. With ``comm`` it averages the grads over the
    ranks in each step (and keeps 1/N of its state per rank with ``shard_state``)."""
    entries = model.parameters_and_gradients()
    decayed = [(p, g) for p, g, decay in entries if decay]
    plain = [(p, g) for p, g, decay in entries if not decay]
    groups = [{"params": [p for p, _ in decayed], "weight_decay": weight_decay},
              {"params": [p for p, _ in plain], "weight_decay": 0.0}]
    grads = [g for _, g in decayed + plain]
    common = dict(max_grad_norm=max_grad_norm, comm=comm, shard_state=shard_state)
    if name == "adam":
        opt = fo.optim.Adam(groups, lr=lr, **common)
    elif name == "adamw":
        opt = fo.optim.AdamW(groups, lr=lr, **common)
    elif name == "sgd":
        opt = fo.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, **common)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    return opt, grads


# ---------------------------------------------------------------- training loop

@dataclass
class History:
    loss: list = field(default_factory=list)
    train_accuracy: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    seconds: list = field(default_factory=list)


def train_step(model: MLP, opt, grads, x: np.ndarray, y: np.ndarray,
               dlogits: np.ndarray) -> float:
    """One batch: forward, loss, backward into the grads buffers, one optimizer step."""
    logits = model.forward(x, training=True)
    loss = model.loss_and_grad(logits, y, dlogits)
    model.backward(dlogits)
    opt.step(grads)
    return loss


def train(model: MLP, opt, grads, data, *, epochs: int, batch_size: int, seed: int,
          base_lr: float | None = None, verbose: bool = True, label: str = "",
          comm: fod.Communicator | None = None) -> History:
    """Minibatch training; one ``opt.step(grads)`` per batch. With ``base_lr`` the learning
    rate follows a cosine decay from ``base_lr`` to 0 over the run (per step). With
    ``comm``, every rank draws the same batches and trains on its equal slice of each."""
    x_train, y_train, x_test, y_test = data
    rank, ranks = (0, 1) if comm is None else (comm.rank, comm.size)
    if batch_size % ranks:
        raise ValueError(f"the batch size ({batch_size}) must be a multiple of the number of "
                         f"ranks ({ranks})")
    local = batch_size // ranks  # this rank's rows of each batch
    rng = np.random.default_rng(seed)
    x_batch = np.empty((local, x_train.shape[1]), DTYPE)
    y_batch = np.empty(local, np.int64)
    dlogits = np.empty((local, model.sizes[-1]), DTYPE)
    batches_per_epoch = x_train.shape[0] // batch_size  # the last partial batch is dropped
    total_steps = epochs * batches_per_epoch
    history = History()
    step = 0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(x_train.shape[0])
        epoch_loss = 0.0
        for b in range(batches_per_epoch):
            idx = order[b * batch_size + rank * local:b * batch_size + (rank + 1) * local]
            np.take(x_train, idx, axis=0, out=x_batch)
            np.take(y_train, idx, out=y_batch)
            if base_lr is not None:
                lr = 0.5 * base_lr * (1 + math.cos(math.pi * step / total_steps))
                for group in opt.param_groups:
                    group["lr"] = lr
            epoch_loss += train_step(model, opt, grads, x_batch, y_batch, dlogits)
            step += 1
        mean_loss = np.array([epoch_loss / batches_per_epoch])
        if comm is not None:  # each rank's loss is over its slice: average them
            fod.allreduce_mean_(mean_loss, comm)
        history.loss.append(float(mean_loss[0]))
        history.train_accuracy.append(float(np.mean(model.predict(x_train) == y_train)))
        history.test_accuracy.append(float(np.mean(model.predict(x_test) == y_test)))
        history.seconds.append(time.perf_counter() - start)
        if verbose and rank == 0:
            print(f"{label}epoch {epoch:3d}  loss {history.loss[-1]:.4f}  "
                  f"train acc {history.train_accuracy[-1]:.4f}  "
                  f"test acc {history.test_accuracy[-1]:.4f}  {history.seconds[-1] * 1e3:6.0f} ms",
                  flush=True)
    return history


def plot_history(history: History, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history.loss) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history.loss)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    ax_acc.plot(epochs, history.train_accuracy, label="train")
    ax_acc.plot(epochs, history.test_accuracy, label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@contextlib.contextmanager
def limit_threads(n: int | None):
    """Runs the body with ``n`` threads for fusedops and NumPy's BLAS (via threadpoolctl,
    which scikit-learn depends on). ``None``: BLAS gets one thread and fusedops keeps its
    default. The matrix products here are at most 64 x 256 x 256: a BLAS thread pool gains
    nothing on them, and its threads spinning between calls take the cores fusedops and
    NumPy need (a run took 2-25 s on a busy 2-core machine instead of about 1 s)."""
    from threadpoolctl import threadpool_limits

    if n is None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    previous = fo.get_num_threads()
    fo.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        fo.set_num_threads(previous)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default: 3e-3 for adam/adamw, 0.1 for sgd)")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="on the dense weights: L2 for adam/sgd, decoupled for adamw "
                             "(default: 1e-4 for adam/sgd, 1e-2 for adamw)")
    parser.add_argument("--max-grad-norm", type=float, default=None,
                        help="clip the global gradient norm to this value")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--constant-lr", action="store_true", help="no cosine decay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for fusedops and NumPy's BLAS (default 0: one BLAS thread, "
                             "fusedops' default)")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="save loss/accuracy curves as a PNG")
    parser.add_argument("--distributed", action="store_true",
                        help="data parallel over the ranks of mpiexec (one rank without it)")
    parser.add_argument("--shard-state", action="store_true",
                        help="with --distributed: ZeRO-1, each rank keeps 1/N of the optimizer state")
    args = parser.parse_args(argv)
    if args.shard_state and not args.distributed:
        parser.error("--shard-state needs --distributed")
    if args.lr is None:
        args.lr = 0.1 if args.optimizer == "sgd" else 3e-3
    if args.weight_decay is None:
        args.weight_decay = 1e-2 if args.optimizer == "adamw" else 1e-4
    return args


def main(argv=None) -> History:
    args = parse_args(argv)
    with limit_threads(args.threads or None):
        return run(args)


def run(args) -> History:
    comm = fod.world() if args.distributed else None
    lead = comm is None or comm.rank == 0  # the rank that reports
    data = load_digits_split(seed=args.seed)
    x_train = data[0]
    model = MLP([x_train.shape[1], *args.hidden, 10], batch_norm=True, activation="relu",
                capacity=args.batch_size, seed=args.seed, comm=comm)
    opt, grads = make_optimizer(model, args.optimizer, args.lr, args.weight_decay,
                                args.max_grad_norm, comm=comm, shard_state=args.shard_state)
    if comm is not None:  # the ranks built the same seeded model; make sure they start equal
        fod.broadcast_([p for p, _, _ in model.parameters_and_gradients()], comm)
    if lead:
        ranks = "" if comm is None else (f"; {comm.size} ranks, data parallel"
                                         + (", ZeRO-1" if args.shard_state else ""))
        print(f"fusedops {fo.__version__} ({fo.simd_isa()}, {fo.get_num_threads()} threads); "
              f"{x_train.shape[0]} train / {data[2].shape[0]} test images; model "
              f"{'-'.join(map(str, model.sizes))}; {args.optimizer} lr {args.lr} "
              f"weight decay {args.weight_decay} max grad norm {args.max_grad_norm}{ranks}")
    start = time.perf_counter()
    history = train(model, opt, grads, data, epochs=args.epochs, batch_size=args.batch_size,
                    seed=args.seed, base_lr=None if args.constant_lr else args.lr, comm=comm)
    if lead:
        print(f"total time: {time.perf_counter() - start:.2f} s")
    if args.plot and lead:
        plot_history(history, args.plot, f"MLP {'-'.join(map(str, model.sizes))} on digits, "
                     f"{args.optimizer}")
        print(f"saved {args.plot}")
    if lead:
        print(f"test accuracy: {history.test_accuracy[-1]:.4f}")
    return history


if __name__ == "__main__":
    main()
