"""Losses a :class:`~training.trainer.Trainer` combines with weights.

Every loss is called with the model and returns a scalar tensor for the next batch. Losses that draw
batches keep their random state in ``state_dict`` so an interrupted run resumes exactly. Data and
physics residuals are divided by the model's output scale (when it has one), so outputs of different
magnitudes (u ~ 1, w ~ 0.1) weigh alike.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np
import torch

from core.errors import InvalidInputError

from .problems import Problem


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _out_scale(model, n: int, device) -> torch.Tensor:
    s = getattr(model, "out_scale", None)
    return s.to(device) if s is not None else torch.ones(n, device=device)


# ---------------------------------------------------------------- metrics on tensors
def mse(p, y):
    return torch.mean((p - y) ** 2)


def mae(p, y):
    return torch.mean(torch.abs(p - y))


def rmse(p, y):
    return torch.sqrt(mse(p, y))


def rel_l2(p, y):
    return torch.linalg.vector_norm(p - y) / torch.linalg.vector_norm(y)


def l4(p, y):
    """Mean fourth power: weighs the largest errors (the tail) far more than the MSE does."""
    return torch.mean((p - y) ** 4)


DATA_METRICS: dict[str, Callable] = {"mse": mse, "mae": mae, "rmse": rmse, "rel_l2": rel_l2, "l4": l4}
FUSED_POWERS = {"mse": 2.0, "l4": 4.0}  # the metrics the engine computes: mean |error|^p


class Loss(ABC):
    """A named term of the training objective."""

    name: str = "loss"

    @abstractmethod
    def __call__(self, model) -> torch.Tensor:
        """The loss on the next batch."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # the hand-written engine (training.engine): a loss that has a fused form says how many rows it needs
    # and returns a step ``weight -> loss`` that adds its gradient to the parameters' .grad
    def fused_rows(self) -> int:
        return 0

    def fused(self, engine):
        """A fused step for ``engine`` (an :class:`~training.engine.MLPEngine`), or ``None`` (autograd only)."""
        return None

    def _is_own_call(self) -> bool:
        """True unless a subclass changed what the loss computes (then only the autograd path is faithful):
        ``__call__`` must be that of the class that defines the fused form."""
        owner = next(c for c in type(self).__mro__ if "fused_at" in vars(c) or "fused" in vars(c))
        return type(self).__call__ is owner.__call__


class DataLoss(Loss):
    """Supervised loss on (input, target) pairs, minibatches reshuffled every pass by a seeded generator.

    ``metric`` is one of ``mse``, ``mae``, ``rmse``, ``rel_l2``, ``l4`` (mean fourth power: the tail of the errors
    weighs more). ``batch_size=None`` (or >= rows) uses the full set each step. Errors are divided by the
    model's output scale (``rel_l2`` is already relative). ``weights`` (one per row, >= 0): each pass draws
    its rows with probability proportional to them, with replacement, instead of every row once
    (:func:`rate_weights`).
    """

    def __init__(self, data_in, target, batch_size: int | None = None, metric: str = "mse", seed: int = 0,
                 name: str | None = None, weights=None):
        if metric not in DATA_METRICS:
            raise InvalidInputError(f"unknown data loss {metric!r}; valid: {sorted(DATA_METRICS)}")
        X = torch.as_tensor(np.asarray(data_in) if not torch.is_tensor(data_in) else data_in).float()
        Y = torch.as_tensor(np.asarray(target) if not torch.is_tensor(target) else target).float()
        if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0] or X.shape[0] == 0:
            raise InvalidInputError(f"data_in and target must be 2-D with the same number of rows, got {tuple(X.shape)} and {tuple(Y.shape)}")
        if not (torch.isfinite(X).all() and torch.isfinite(Y).all()):
            raise InvalidInputError("data_in or target holds NaN or infinite values")
        self.X, self.Y = X, Y
        self.metric, self.fn = metric, DATA_METRICS[metric]
        self.name = name or metric
        n = X.shape[0]
        self.batch_size = n if batch_size is None or batch_size >= n else int(batch_size)
        if self.batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        self.weights = None
        if weights is not None:
            w = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
            if w.shape != (n,) or not torch.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
                raise InvalidInputError(f"weights must be {n} finite non-negative numbers, not all zero "
                                        f"(one per row); got shape {tuple(w.shape)}")
            self.weights = w
        self._gen = torch.Generator().manual_seed(int(seed))
        self._gen_at_perm = None  # the generator's state when the current pass's permutation was drawn
        self._perm: torch.Tensor | None = None
        self._pos = 0
        self._shuffled = None  # the fused path's rows of this pass, in permuted order (scaled, on the device)

    def _new_pass(self):
        self._gen_at_perm = self._gen.get_state()
        n = self.X.shape[0]
        if self.weights is None:  # every row once per pass
            perm = torch.randperm(n, generator=self._gen)
        else:  # a pass of n rows drawn with probability proportional to their weights
            perm = torch.multinomial(self.weights, n, replacement=True, generator=self._gen)
        self._perm, self._pos, self._shuffled = perm, 0, None

    def _next_rows(self) -> slice:
        """Where the next batch lies in this pass's permutation (a new pass when the rest is too short)."""
        if self._perm is None or self._pos + self.batch_size > self.X.shape[0]:
            self._new_pass()
        rows = slice(self._pos, self._pos + self.batch_size)
        self._pos += self.batch_size
        return rows

    def _batch(self, device):
        if self.X.device != device:
            self.X, self.Y = self.X.to(device), self.Y.to(device)
        if self.batch_size == self.X.shape[0]:
            return self.X, self.Y
        idx = self._perm_rows(self._next_rows()).to(device)
        return self.X[idx], self.Y[idx]

    def _perm_rows(self, rows: slice):
        return self._perm[rows]

    def fused_rows(self) -> int:
        return self.batch_size

    def fused(self, engine):
        if not self._is_own_call() or self.metric not in FUSED_POWERS:
            return None
        if self.batch_size == self.X.shape[0]:  # every row each step: the full-set objective, in one chunk
            return self.fused_full(engine)
        power = FUSED_POWERS[self.metric]
        device = engine.W[0].device
        Xs, Ys = engine.scale_x(self.X.to(device)), engine.scale_y(self.Y.to(device))

        def step(weight: float):
            rows = self._next_rows()
            if self._shuffled is None:  # one gather per pass, then contiguous batches (no copy per step)
                perm = self._perm.to(device)
                self._shuffled = (Xs.index_select(0, perm), Ys.index_select(0, perm))
            xs, ys = self._shuffled
            return engine.data_step(xs[rows], ys[rows], weight, power)

        return step

    def fused_full(self, engine):
        """The full-set objective (every row once, as ``batch_size = rows`` gives) through ``engine``, in
        chunks of at most its rows, each weighted by its share: what the L-BFGS polish evaluates."""
        if not self._is_own_call() or self.metric not in FUSED_POWERS:
            return None
        power = FUSED_POWERS[self.metric]
        device = engine.W[0].device
        Xs, Ys = engine.scale_x(self.X.to(device)), engine.scale_y(self.Y.to(device))
        n = Xs.shape[0]
        chunks = [(a, min(a + engine.rows, n)) for a in range(0, n, engine.rows)]
        if len(chunks) == 1:
            return lambda weight: engine.data_step(Xs, Ys, weight, power)

        def step(weight: float):
            total = 0.0
            for a, b in chunks:  # mean over a chunk x its share of the rows = its part of the mean over all
                share = (b - a) / n
                total = total + share * engine.data_step(Xs[a:b], Ys[a:b], weight * share, power)
            return total

        return step

    def __call__(self, model):
        device = _device(model)
        x, y = self._batch(device)
        p = model(x)
        if self.metric == "rel_l2":
            return self.fn(p, y)
        s = _out_scale(model, y.shape[1], device)
        return self.fn(p / s, y / s)

    def state_dict(self):
        # the permutation is redrawn from the generator's state at its draw: a small checkpoint
        return {"gen": self._gen.get_state(), "gen_at_perm": self._gen_at_perm, "pos": self._pos}

    def load_state_dict(self, state):
        if state.get("gen_at_perm") is not None:
            self._gen.set_state(state["gen_at_perm"])
            self._new_pass()
        elif state.get("perm") is not None:  # a checkpoint written before the permutation was redrawn
            self._perm, self._shuffled = state["perm"], None
        else:
            self._perm = None
        self._gen.set_state(state["gen"])
        self._pos = state["pos"]


class _BoxSampler:
    """Collocation points drawn afresh each call, uniformly or quasi-randomly, over a box."""

    def __init__(self, lo, hi, sampler: str, seed: int):
        if sampler not in ("uniform", "sobol"):
            raise InvalidInputError(f"unknown collocation sampler {sampler!r}; valid: ['sobol', 'uniform']")
        self.lo, self.hi = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
        self.sampler, self.seed = sampler, int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)
        self._sobol = torch.quasirandom.SobolEngine(len(lo), scramble=True, seed=self.seed) if sampler == "sobol" else None
        # Sobol points drawn ahead and mapped onto the box in blocks (the same sequence and the same
        # arithmetic as point by point; a call then costs a slice, not three operators)
        self._pool, self._used = None, 0

    POOL_CALLS = 64  # calls' worth of Sobol points drawn at once

    def __call__(self, n: int, device) -> torch.Tensor:
        """``n`` fresh points (a new tensor, or rows of the drawn block no later call returns)."""
        if self._sobol is None:
            return (self.lo + torch.rand(n, len(self.lo), generator=self._gen) * (self.hi - self.lo)).to(device)
        if self._pool is None or self._used + n > len(self._pool):
            self._pool, self._used = self.lo + self._sobol.draw(n * self.POOL_CALLS) * (self.hi - self.lo), 0
        x = self._pool[self._used:self._used + n]
        self._used += n
        return x.to(device)

    def _consumed(self) -> int:
        if self._sobol is None:
            return 0
        left = 0 if self._pool is None else len(self._pool) - self._used
        return self._sobol.num_generated - left

    def state_dict(self):
        return {"gen": self._gen.get_state(), "drawn": self._consumed()}

    def load_state_dict(self, s):
        self._gen.set_state(s["gen"])
        if self._sobol is not None:
            self._sobol.reset()
            self._sobol.fast_forward(s["drawn"])
            self._pool, self._used = None, 0


def rate_weights(problem: Problem, X, Y, strength: float) -> np.ndarray:
    """Sampling weights that favour the rows where the state changes fast (spike upstrokes, say), from the
    training data alone: ``1 + strength * r / mean(r)``, ``r`` each row's rate of change in units of each
    output's spread. For a trajectory problem the rate is the model's right-hand side at the row's label
    (its parameters from the row's inputs); for a step problem (``Y`` the increments) the increment itself.
    Every row keeps at least the weight 1 (a uniform floor); ``strength`` 0 is uniform sampling."""
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    if problem.kind == "trajectory":
        phys = _TrajectoryPhysics(problem)
        x, y = torch.as_tensor(X), torch.as_tensor(Y)
        f = phys.m.torch_rhs(phys.columns(y, "out_idx"), phys.params(x), **phys.time(x))
        rate = phys.columns(f, "state_idx").numpy()
    elif problem.kind == "step":
        rate = Y
    else:
        raise InvalidInputError(f"sampling 'rate' needs a trajectory or a step problem; {problem.name!r} is "
                                f"{problem.kind!r} (set training.sampling: uniform for it)")
    r = np.linalg.norm(rate / (Y.std(axis=0) + 1e-12), axis=1)
    if not np.isfinite(r).all():
        raise InvalidInputError(f"problem {problem.name!r}: the rate of change is not finite on every training row")
    return 1.0 + float(strength) * r / max(float(r.mean()), 1e-300)


def contrast_weights(problem: Problem, X, Y, strength: float, k: int = 8) -> np.ndarray:
    """Sampling weights that favour the rows whose neighbours' labels disagree, from the training data alone:
    ``1 + strength * s / mean(s)``, ``s`` the spread (standard deviation, in units of each output's spread)
    of the labels of the row's ``k`` nearest other training rows. Distances are taken in the input box
    scaled to [0, 1], with a trajectory's time weighted 100 times (so neighbours share the time and differ in
    the initial state or the parameters). Where the answer changes abruptly with the inputs (an initial
    state near the firing threshold: a spike or none) the neighbours disagree and the row is drawn more."""
    from scipy.spatial import cKDTree

    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    if problem.kind not in ("trajectory", "step"):
        raise InvalidInputError(f"sampling 'contrast' needs a trajectory or a step problem; {problem.name!r} is "
                                f"{problem.kind!r} (set training.sampling: uniform for it)")
    if len(X) <= k:
        raise InvalidInputError(f"sampling 'contrast' needs more than {k} training rows, got {len(X)}")
    lo, hi = (np.asarray(b, dtype=np.float64) for b in problem.box())
    Z = (X - lo) / np.where(hi > lo, hi - lo, 1.0)
    if "t" in problem.inputs:
        Z[:, problem.inputs.index("t")] *= 100.0
    _, nb = cKDTree(Z).query(Z, k=k + 1)
    spread = Y[nb[:, 1:]].std(axis=1) / (Y.std(axis=0) + 1e-12)
    s = np.linalg.norm(spread, axis=1)
    return 1.0 + float(strength) * s / max(float(s.mean()), 1e-300)


class _TrajectoryPhysics:
    """How the columns of a trajectory problem map onto the cell model's states and parameters."""

    def __init__(self, p: Problem):
        if p.kind != "trajectory":
            raise InvalidInputError(f"physics-informed losses need a trajectory problem; {p.name!r} is {p.kind!r}")
        m = p.model
        if sorted(p.outputs) != sorted(m.state_names):
            raise InvalidInputError(
                f"problem {p.name!r}: the ODE residual needs every state of {m.name!r} {list(m.state_names)} as an output")
        self.p, self.m = p, m
        self.out_idx = [p.outputs.index(s) for s in m.state_names]  # network outputs -> model state order
        self.state_idx = [m.state_names.index(o) for o in p.outputs]  # model states -> network output order
        self._index: dict = {}  # (which, device) -> column index (a slice where the order is the identity)

    def columns(self, t: torch.Tensor, which: str) -> torch.Tensor:
        """``t``'s columns in ``out_idx`` or ``state_idx`` order. No list indexing: that copies a host index
        tensor to the device at every call, which a CUDA graph capture refuses (and costs a copy a step)."""
        key = (which, t.device)
        if key not in self._index:
            idx = getattr(self, which)
            self._index[key] = (slice(None) if idx == list(range(len(idx)))
                                else torch.as_tensor(idx, dtype=torch.long, device=t.device))
        i = self._index[key]
        return t[:, i] if isinstance(i, slice) else t.index_select(1, i)

    def params(self, x: torch.Tensor) -> dict:
        return self.p.parameters(self.p.columns(x))

    def time(self, x: torch.Tensor) -> dict:
        """The right-hand side's time keyword (the input ``t``) where the model depends on time (a paced
        imported model's stimulus), else nothing."""
        return {"t": x[:, self.p.inputs.index("t")]} if self.m.time_ident is not None else {}

    def initial_states(self, x: torch.Tensor) -> torch.Tensor:
        return self.p.initial_states(self.p.columns(x), x.shape[0])


class _CollocationLoss(Loss):
    """A loss on points drawn afresh every call over a trajectory problem's input box."""

    def __init__(self, problem: Problem, n_points: int, sampler: str, seed: int, name: str):
        self.phys = _TrajectoryPhysics(problem)
        self.sample = _BoxSampler(*problem.box(), sampler, seed)
        self.n_points, self.name = int(n_points), name
        self.t_col = problem.inputs.index("t")

    def state_dict(self):
        return self.sample.state_dict()

    def load_state_dict(self, s):
        self.sample.load_state_dict(s)

    def fused_rows(self) -> int:
        return self.n_points

    def fused(self, engine):
        """Fresh points from the sampler every step, through :meth:`fused_at` (each subclass's arithmetic)."""
        if not self._is_own_call():
            return None
        at, device = self.fused_at(engine), engine.W[0].device
        return lambda weight: at(self.sample(self.n_points, device), weight)


class ODEResidualLoss(_CollocationLoss):
    """Mean squared ODE residual ``dy/dt - f(y, params)`` of a trajectory problem's network.

    ``f`` is the torch right-hand side derived from the solvers' model definition; ``dy/dt`` comes from
    autograd with respect to the ``t`` input. Collocation points are drawn afresh every call over the
    problem's input box. With ``bounds`` (``(lo, hi)`` per output, e.g. the training labels' range), ``f`` sees
    the network's states clamped into them, with no gradient through ``f`` beyond them: a model whose rates
    are undefined outside (LR1991's ``log(Ca_i)`` for ``Ca_i <= 0``, its ``exp(0.35 V)`` overflowing float32)
    is then never evaluated there; the data and initial-condition terms pull the network back. With
    ``rhs_dtype="float64"``, ``f`` and its Jacobian are evaluated in float64 (LR1991's gates switch over
    0.24 mV through ``exp(-(V + 40) / 0.24)``, whose derivative is inf / inf in float32 at rest); by default
    (``None``) in the network's own precision.
    """

    def __init__(self, problem: Problem, n_points: int = 4096, sampler: str = "uniform", seed: int = 0,
                 name: str = "physics", bounds=None, rhs_dtype: str | None = None):
        super().__init__(problem, n_points, sampler, seed, name)
        if rhs_dtype not in (None, "float32", "float64"):
            raise InvalidInputError(f"physics rhs_dtype: {rhs_dtype!r} is neither 'float32' nor 'float64'")
        self.rhs_dtype = None if rhs_dtype is None else getattr(torch, rhs_dtype)
        if bounds is not None:
            lo, hi = (torch.as_tensor(b, dtype=torch.float32).reshape(-1) for b in bounds)
            if lo.numel() != len(problem.outputs) or hi.numel() != len(problem.outputs) or not bool((lo <= hi).all()):
                raise InvalidInputError(f"problem {problem.name!r}: state bounds need lo <= hi for each of its "
                                        f"{len(problem.outputs)} outputs")
            bounds = (lo, hi)
        self.bounds = bounds

    def _rhs(self, y, x, jacobian: bool = False):
        """``f`` (and its Jacobian) at the network's states ``y`` (output order; clamped into ``bounds``) and
        inputs ``x``, in the model's state order, evaluated in ``rhs_dtype`` and returned in ``y``'s."""
        phys, dt = self.phys, self.rhs_dtype or y.dtype
        states = phys.columns(self._clamped(y), "out_idx").to(dt)
        params = {k: (v.to(dt) if torch.is_tensor(v) else v) for k, v in phys.params(x).items()}
        time = {k: v.to(dt) for k, v in phys.time(x).items()}
        if jacobian:
            f, J = phys.m.torch_rhs_jacobian(states, params, **time)
            return f.to(y.dtype), J.to(y.dtype)
        return phys.m.torch_rhs(states, params, **time).to(y.dtype)

    def _clamped(self, y):
        """The states ``f`` sees: ``y`` clamped into ``bounds`` (unchanged without them)."""
        if self.bounds is None:
            return y
        lo, hi = (b.to(device=y.device, dtype=y.dtype) for b in self.bounds)
        return torch.minimum(torch.maximum(y, lo), hi)

    def __call__(self, model):
        device = _device(model)
        x = self.sample(self.n_points, device).requires_grad_(True)
        y = model(x)
        dydt = torch.stack([
            torch.autograd.grad(y[:, j].sum(), x, create_graph=True)[0][:, self.t_col] for j in range(y.shape[1])
        ], dim=1)
        return self._residual(y, dydt, x, _out_scale(model, y.shape[1], device))

    def _residual(self, y, dydt, x, scale):
        f = self._rhs(y, x)
        res = (dydt - self.phys.columns(f, "state_idx")) / scale
        return torch.mean(res ** 2)

    def fused_at(self, engine):
        """``(points, weight) -> loss`` on given collocation points (physical units), through ``engine``."""
        m = engine.model
        v = torch.zeros(len(self.phys.p.inputs), device=engine.W[0].device, dtype=engine.W[0].dtype)
        v[self.t_col] = 1.0 / m.in_halfwidth[self.t_col]  # d(scaled input)/dt
        scale = m.out_scale
        phys = self.phys
        if not phys.m.has_jacobian():  # autograd over the outputs' small graph
            def at(x, weight: float):
                return engine.tangent_step(engine.scale_x(x), v, lambda z, zt, _: self._residual(
                    m.out_center + scale * z, scale * zt, x, scale), weight)

            return at

        plain = self.bounds is None and self.rhs_dtype is None  # the one-call kernels know neither option
        step = engine.residual_kernel(phys.p) if engine.residual_kernel is not None and plain else None
        if step is not None:  # the whole step in one call (the compiled CPU step, or one Triton kernel)
            def at(x, weight: float):
                return step(x, v, weight)

            return at

        def at(x, weight: float):  # the residual's gradient in closed form (the model's SymPy Jacobian)
            def residual_grad(z, zt):
                y = m.out_center + scale * z
                yc = self._clamped(y)
                f, J = self._rhs(y, x, jacobian=True)
                res = zt - phys.columns(f, "state_idx") / scale  # (dy/dt - f) / scale, dy/dt = scale * zt
                loss = torch.mean(res * res)
                gres = res.mul_(2.0 / res.numel())  # d loss / d res = d loss / d zt
                c = phys.columns(gres / scale, "out_idx")  # cotangent of f, in the model's state order
                gy = torch.matmul(c.unsqueeze(-2), J).squeeze(-2)  # c^T J: d loss / d y (model order), negated
                gy = phys.columns(gy, "state_idx").mul_(-scale)
                if self.bounds is not None:  # no gradient through f where the state was clamped
                    gy = gy * (yc == y)
                return loss, gy, gres

            return engine.tangent_step_closed(engine.scale_x(x), v, residual_grad, weight)

        return at


class InitialConditionLoss(_CollocationLoss):
    """Mean squared error of the network at t = 0 against the initial state it was given."""

    def __init__(self, problem: Problem, n_points: int = 1024, sampler: str = "uniform", seed: int = 1,
                 name: str = "initial"):
        super().__init__(problem, n_points, sampler, seed, name)

    def __call__(self, model):
        device = _device(model)
        x = self.sample(self.n_points, device).clone()
        x[:, self.t_col] = 0.0
        y0 = self.phys.columns(self.phys.initial_states(x), "state_idx")
        res = (model(x) - y0) / _out_scale(model, y0.shape[1], device)
        return torch.mean(res ** 2)

    def fused_at(self, engine):
        """``(points, weight) -> loss`` on given points (their t is set to 0), through ``engine``."""
        mask = torch.ones(len(self.phys.p.inputs), device=engine.W[0].device)
        mask[self.t_col] = 0.0

        def at(x, weight: float):
            x = x * mask
            y0 = self.phys.columns(self.phys.initial_states(x), "state_idx")
            return engine.data_step(engine.scale_x(x), engine.scale_y(y0), weight)

        return at


class ResidualLoss(Loss):
    """A user's physics loss: ``pinn_func(batch, model) -> scalar`` on ``batch_generator(batch_size, device)``.

    This is the seed README's scenario B (``LOSS_PINN``). The generator's own randomness is the user's.
    """

    def __init__(self, pinn_func: Callable, batch_generator: Callable, batch_size: int, name: str = "residual"):
        if not callable(pinn_func) or not callable(batch_generator):
            raise InvalidInputError("pinn_func and batch_generator must be callables")
        self.pinn_func, self.batch_generator = pinn_func, batch_generator
        self.batch_size, self.name = int(batch_size), name

    def __call__(self, model):
        batch = self.batch_generator(self.batch_size, _device(model))
        out = self.pinn_func(batch, model)
        if not torch.is_tensor(out) or out.numel() != 1:
            raise InvalidInputError(f"pinn_func of loss {self.name!r} must return a scalar tensor, got {type(out).__name__}"
                                    f"{'' if not torch.is_tensor(out) else ' of shape ' + str(tuple(out.shape))}")
        return out.reshape(())


class GateResidualLoss(Loss):
    """hh_m: residual of the gate equation for a network (t, V) -> m along a recorded voltage trace.

    ``variant="seed"`` differentiates m with respect to t at fixed V, as the seed notebook does (not the
    ODE's derivative, since V changes with t). ``variant="total"`` uses the total derivative along the
    trace, dm/dt = dm/dt|_V + dm/dV|_t * dV/dt, with dV/dt taken from the voltage trace alone (forward
    differences on its time grid: exactly the Euler increments, stimulus included, when the trace is saved
    every solver step), so the residual uses the problem's input V(t) and never a gate's values.
    Collocation points: the trace's time points, or those of ``points`` (indices into ``t``; the training
    code passes every time point outside the test split, so the test rows are not seen even as inputs).
    """

    def __init__(self, cell_model, gate: str, t, states, variant: str = "total", name: str | None = None,
                 points=None):
        if variant not in ("seed", "total"):
            raise InvalidInputError(f"unknown gate residual {variant!r}; valid: ['seed', 'total']")
        m = cell_model
        self.m, self.variant, self.name = m, variant, name or f"physics_{variant}"
        self.gate = m.state_names.index(gate)
        t, S = np.asarray(t, dtype=np.float64), np.asarray(states, dtype=np.float64)
        if t.ndim != 1 or S.ndim != 2 or len(t) != len(S) or len(t) < 2 or not np.all(np.diff(t) > 0):
            raise InvalidInputError(f"the gate residual needs an increasing time grid (K,) of K >= 2 points and states "
                                    f"(K, n_states), got shapes {t.shape} and {S.shape}")
        dVdt = np.diff(S[:, 0]) / np.diff(t)
        dVdt = np.append(dVdt, dVdt[-1])  # the last point: the slope into it
        if points is not None:
            idx = np.asarray(points)
            if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 \
                    or idx.max() >= len(t) or np.unique(idx).size != idx.size:
                raise InvalidInputError(f"points must be distinct indices into the trace's {len(t)} time points")
            t, S, dVdt = t[idx], S[idx], dVdt[idx]
        self.x = torch.tensor(np.stack([t, S[:, 0]], axis=1), dtype=torch.float32)
        self.dVdt = torch.tensor(dVdt, dtype=torch.float32)
        self.S = torch.tensor(S, dtype=torch.float32)
        self.affine = None  # (c0, c1) per point where the gate's equation is c0 + c1 * gate along the trace
        if m.affine_in(gate):
            at = [S.copy(), S.copy()]
            at[0][:, self.gate], at[1][:, self.gate] = 0.0, 1.0
            c0, c1 = (m.numpy_rhs(a)[:, self.gate] for a in at)
            self.affine = (c0, c1 - c0)

    def __call__(self, model):
        device = _device(model)
        x = self.x.to(device).detach().requires_grad_(True)  # not self.x itself (on the CPU .to is a no-op)
        g_pred = model(x)[:, 0]
        grad = torch.autograd.grad(g_pred.sum(), x, create_graph=True)[0]
        dgdt = grad[:, 0] if self.variant == "seed" else grad[:, 0] + grad[:, 1] * self.dVdt.to(device)
        return self._residual(g_pred, dgdt, self.S.to(device), _out_scale(model, 1, device)[0])

    def _residual(self, g_pred, dgdt, S, scale):
        states = torch.cat([S[:, :self.gate], g_pred[:, None], S[:, self.gate + 1:]], dim=1)
        rhs = self.m.torch_rhs(states)[:, self.gate]
        return torch.mean(((dgdt - rhs) / scale) ** 2)

    def fused_rows(self) -> int:
        return self.x.shape[0]

    def fused(self, engine):
        if not self._is_own_call():
            return None
        m = engine.model
        device, dt = engine.W[0].device, engine.W[0].dtype  # the network's precision (a float64 polish too)
        x, S, dVdt = (a.to(device=device, dtype=dt) for a in (self.x, self.S, self.dVdt))
        h = m.in_halfwidth
        if self.variant == "seed":  # d/dt at fixed V: one direction for every row
            v = torch.stack([1.0 / h[0], torch.zeros((), device=device, dtype=dt)])
        else:  # along the trace: d/dt + dV/dt d/dV, a direction per row
            v = torch.stack([torch.ones_like(dVdt) / h[0], dVdt / h[1]], dim=1)
        xs = engine.scale_x(x)
        scale = m.out_scale[0]
        if not self.m.has_jacobian():
            def step(weight: float):
                return engine.tangent_step(xs, v, lambda z, zt, _: self._residual(
                    m.out_center[0] + scale * z[:, 0], scale * zt[:, 0], S, scale), weight)

            return step
        if self.affine is not None:  # the gate's equation c0 + c1 * gate: two numbers a point, computed once
            c0, c1 = (torch.as_tensor(c, dtype=torch.float64) for c in self.affine)
            center, sc = float(m.out_center[0]), float(scale)
            # (d gate/dt - rhs) / scale = zt - (c0 + c1 * center) / scale - c1 * z, gate = center + scale * z
            a0 = ((c0 + c1 * center) / sc).to(device=device, dtype=dt)[:, None]
            c1 = c1.to(device=device, dtype=dt)[:, None]
            neg_c1 = -c1

            def affine_grad(z, zt):
                res = zt[:, :1] - a0 - c1 * z[:, :1]
                loss = torch.mean(res * res)
                gres = res.mul_(2.0 / res.numel())
                return loss, gres * neg_c1, gres

            def step(weight: float):
                return engine.tangent_step_closed(xs, v, affine_grad, weight)

            step.parts = (xs, v, affine_grad)  # for fused_with_data
            return step
        g, states = self.gate, S.clone()

        def residual_grad(z, zt):  # closed form: d rhs_gate / d gate is the Jacobian's diagonal entry
            states[:, g] = m.out_center[0] + scale * z[:, 0]
            f, J = self.m.torch_rhs_jacobian(states)
            res = zt[:, :1] - f[:, g:g + 1] / scale  # (d gate/dt - rhs) / scale, d gate/dt = scale * zt
            loss = torch.mean(res * res)
            gres = res.mul_(2.0 / res.numel())
            return loss, gres * J[:, g, g:g + 1].neg(), gres

        def step(weight: float):
            return engine.tangent_step_closed(xs, v, residual_grad, weight)

        step.parts = (xs, v, residual_grad)  # for fused_with_data
        return step

    def fused_with_data(self, engine, data: "DataLoss", data_weight: float, own_weight: float, step=None):
        """The full-set mean-squared data term of ``data`` and this residual in one pass of the engine, when
        every data row is one of the residual's points (hh_m: the training rows are time points of the trace):
        the residual's forward pass already gives the network's outputs there, so the data term costs an
        index and a subtraction instead of its own forward and backward pass. Returns ``(data_step,
        residual_step)`` with the trainer's step signature (the data step does the work and must be called
        first, as the Trainer orders its losses; the residual step returns what it computed), or ``None``
        where it does not apply (then the two terms run separately, with the same result). ``step``: this
        loss's :meth:`fused` step on ``engine`` where the caller has made it already."""
        if not data._is_own_call() or data.metric != "mse" or data.X.shape[1] != 2 or data.Y.shape[1] != 1 \
                or not own_weight:  # the engine scales the joint gradient by own_weight
            return None
        step = step or self.fused(engine)
        parts = getattr(step, "parts", None) if step is not None else None
        if parts is None:
            return None
        where = {tuple(r): i for i, r in enumerate(self.x.numpy().tolist())}
        idx = [where.get(tuple(r)) for r in data.X.float().numpy().tolist()]
        if any(i is None for i in idx):
            return None
        xs, v, grad = parts
        device = xs.device
        idx = torch.as_tensor(idx, dtype=torch.long, device=device)
        ys = engine.scale_y(data.Y.to(device=device, dtype=xs.dtype))
        own = torch.zeros((), device=device, dtype=xs.dtype)
        ratio = float(data_weight) / float(own_weight)  # the engine scales every gradient by own_weight

        def joint_grad(z, zt):
            loss, gz, gzt = grad(z, zt)
            own.copy_(loss)
            d = z.index_select(0, idx).sub_(ys)
            data_loss = torch.mean(d * d)
            gz = gz.index_add(0, idx, d.mul_(2.0 * ratio / d.numel()))
            return data_loss, gz, gzt

        def data_step(weight: float):
            if weight != data_weight:
                raise ValueError(f"the joint step was made for data weight {data_weight}, called with {weight}")
            return engine.tangent_step_closed(xs, v, joint_grad, own_weight)

        def own_step(weight: float):
            if weight != own_weight:
                raise ValueError(f"the joint step was made for residual weight {own_weight}, called with {weight}")
            return own

        return data_step, own_step
