"""Several networks trained as one: the seeds of a run stacked along a leading dimension.

A small MLP's step uses a fraction of a GPU; the seeds of one (problem, kind, n, architecture) are the same
computation on different numbers. :func:`train_together` trains them as one stacked model: each layer's
weights are one ``(S, out, in)`` tensor, the products are batched (``baddbmm``/``bmm``), one fused Adam
updates all of them (Adam is elementwise, so each seed's update is the one it would get alone), and on a
GPU the whole step is captured in a CUDA graph as in :mod:`~training.graph`.

Each seed keeps everything it has when trained alone: its own initialisation (its network is built by its
own seed before stacking), its own data order (its own :class:`~surrogates.losses.DataLoss` generator),
its own validation, best checkpoint, ``losses.csv``, ``model_stats.txt`` and resumable ``checkpoint.pth``.
The networks' parameters and optimiser moments become views into the stacked tensors, so the Trainer's own
code writes each seed's files, and a checkpoint written here is the one a lone run writes: a cohort
resumes a lone run and the other way round. The results equal the seeds trained alone up to the rounding
of batched against single matrix products (the tests compare them).

Where the cohort does not apply (fewer than two networks; a loss other than one data loss with a fused
form; different architectures, batch sizes, data sizes, optimisers or schedules; early stopping; seeds
resumed at different iterations) the networks are trained one after the other, and the reason is printed.
"""
from __future__ import annotations

import sys

import torch

from core.errors import InvalidInputError
from surrogates.losses import FUSED_POWERS, DataLoss
from surrogates.network import MLP

from .engine import ACTIVATIONS, FusedAdam, _Products, power_loss


def cohort_refusal(trainers) -> str | None:
    """Why these Trainers cannot be trained as one stacked model, or ``None`` when they can."""
    if len(trainers) < 2:
        return "fewer than two networks"
    outs = [t.out.resolve() for t in trainers]
    if len(set(outs)) != len(outs):
        raise InvalidInputError("two networks of a cohort write into the same output folder")
    first = trainers[0]
    for t in trainers:
        m = t.model
        if not isinstance(m, MLP):
            return f"{type(m).__name__} is not a surrogates.network.MLP"
        if t.engine == "autograd":
            return "engine 'autograd' was asked for"
        if t.capture is False:
            return "capture=False was asked for"
        if (m.hidden, m.output_activation, m.n_inputs, m.n_outputs) != (
                first.model.hidden, first.model.output_activation, first.model.n_inputs, first.model.n_outputs):
            return "the networks' architectures differ"
        if any(a is not None and a not in ACTIVATIONS for a in [a for a, _ in m.hidden] + [m.output_activation]):
            return "an activation without a closed-form derivative"
        if len(t.losses) != 1 or not isinstance(t.losses[0][0], DataLoss):
            return "a loss other than one data loss (physics-informed losses train alone)"
        loss, w = t.losses[0]
        if not loss._is_own_call() or loss.metric not in FUSED_POWERS:
            return f"data loss {loss.metric!r} has no fused form"
        loss0, w0 = first.losses[0]
        if (loss.X.shape, loss.Y.shape, loss.batch_size, loss.metric, w) != (
                loss0.X.shape, loss0.Y.shape, loss0.batch_size, loss0.metric, w0):
            return "the data losses differ in size, batch, metric or weight"
        if t.optimizer_name not in ("adam", "adamw"):
            return f"optimizer {t.optimizer_name!r} (the cohort steps Adam/AdamW)"
        if (t.optimizer_name, t.lr, t.lr_schedule, t.lr_final, t.val_every) != (
                first.optimizer_name, first.lr, first.lr_schedule, first.lr_final, first.val_every):
            return "the optimisers or schedules differ"
        if t.patience is not None:
            return "early stopping (patience) stops the seeds at different iterations"
        if next(m.parameters()).device != next(first.model.parameters()).device:
            return "the networks are on different devices"
    return None


def train_together(trainers, num_iterations: int, side_by_side: bool = False) -> list[dict]:
    """Train every Trainer for ``num_iterations`` steps, as one stacked model where :func:`cohort_refusal`
    allows; returns each one's :meth:`Trainer.train` summary (with ``cohort``: the number trained together).
    Where it does not: with ``side_by_side`` on a GPU each in its own thread and stream
    (:mod:`~training.side_by_side`), else one after the other."""
    reason = cohort_refusal(trainers)
    if reason is not None:
        if len(trainers) > 1 and side_by_side and next(trainers[0].model.parameters()).device.type == "cuda":
            from .side_by_side import train_side_by_side

            print(f"training {len(trainers)} networks side by side (not stacked: {reason})", file=sys.stderr)
            return train_side_by_side(trainers, num_iterations)
        if len(trainers) > 1:
            why = reason + ("; side by side needs a GPU" if side_by_side else "")
            print(f"training {len(trainers)} networks one after the other: {why}", file=sys.stderr)
        return [{**t.train(num_iterations), "cohort": 1} for t in trainers]
    starts = [t._start(num_iterations) for t in trainers]
    steppers = [st for _, st, _ in starts]
    at = {t.iteration for t in trainers}
    if len(at) > 1 or not all(st.fused for st in steppers) or any(f is None for f, _, _ in starts):
        why = f"resumed at different iterations {sorted(at)}" if len(at) > 1 else "no fused step"
        print(f"training {len(trainers)} networks one after the other: {why}", file=sys.stderr)
        return [{**t.train(num_iterations), "cohort": 1} for t in trainers]
    cohort = _Cohort(trainers, steppers, num_iterations)
    for t in trainers:
        t.label = f"{t.out.name}: "
    t0s = [t0 for _, _, t0 in starts]
    iteration = trainers[0].iteration
    last_check = iteration
    val_every = trainers[0].val_every
    while iteration < num_iterations:
        cohort.run(iteration)
        iteration += 1
        if iteration % val_every == 0 or iteration == num_iterations:
            losses = cohort.losses.detach().cpu()
            bad = cohort.bad.cpu()
            for s, t in enumerate(trainers):
                t.iteration = iteration
                terms = {cohort.name: losses[s]}
                total = cohort.weight * losses[s]
                if bool(bad[s]):
                    t._check_finite(total, terms, since=last_check)
                t._validation_event(total, terms, steppers[s], num_iterations, t0s[s])
            last_check = iteration
    return [{**t._finish(False, t0), "cohort": len(trainers), "path": "seeds stacked (training.cohort)"}
            for t, t0 in zip(trainers, t0s)]


class _Cohort:
    """The stacked parameters, optimiser and data of the cohort, and its step (captured on a GPU)."""

    def __init__(self, trainers, steppers, total: int):
        self.S = S = len(trainers)
        models = [t.model for t in trainers]
        layers = [m.linear_layers() for m in models]
        first = models[0]
        self.acts = [ACTIVATIONS[a] if a else None for a in [a for a, _ in first.hidden] + [first.output_activation]]
        L = len(layers[0])
        # stacked weights and gradients; every network's parameters become views of its slice
        self.W = [torch.stack([ls[i].weight.detach() for ls in layers]) for i in range(L)]
        self.b = [torch.stack([ls[i].bias.detach() for ls in layers]) for i in range(L)]
        self.gW = [torch.zeros_like(w) for w in self.W]
        self.gb = [torch.zeros_like(b) for b in self.b]
        for s, ls in enumerate(layers):
            for i, lin in enumerate(ls):
                lin.weight.data, lin.bias.data = self.W[i][s], self.b[i][s]
                lin.weight.grad, lin.bias.grad = self.gW[i][s], self.gb[i][s]
        # one fused Adam over the stacked tensors (the parameters' order of model.parameters()), its moments
        # stacked from each network's (a resumed run's included); each network's optimiser then holds views
        params = [t for i in range(L) for t in (self.W[i], self.b[i])]
        grads = [t for i in range(L) for t in (self.gW[i], self.gb[i])]
        for p, g in zip(params, grads):
            p.grad = g
        o0 = steppers[0].opt
        self.opt = FusedAdam(params, betas=o0.betas, eps=o0.eps, weight_decay=o0.weight_decay,
                             decoupled=o0._fn is torch._fused_adamw_)
        if any(float(st.opt.step_count) != float(o0.step_count) for st in steppers):
            raise InvalidInputError("the cohort's optimisers are at different steps")
        self.opt.step_count.copy_(o0.step_count)
        for j in range(len(params)):
            self.opt.m[j].copy_(torch.stack([st.opt.m[j] for st in steppers]))
            self.opt.v[j].copy_(torch.stack([st.opt.v[j] for st in steppers]))
        for s, st in enumerate(steppers):
            st.opt.m = [m[s] for m in self.opt.m]
            st.opt.v = [v[s] for v in self.opt.v]
            st.opt.grads = [g[s] for g in grads]
            st.opt.step_count = self.opt.step_count
            st.opt.steps = [self.opt.step_count] * len(params)
        self.steppers = steppers
        # data: each network's rows, scaled as its engine scales them, stacked; a pass's permuted rows are
        # gathered once into fixed buffers and each step takes its batch at a device-side offset
        self.data = [t.losses[0][0] for t in trainers]
        loss0, self.weight = trainers[0].losses[0]
        self.name, self.power = loss0.name, FUSED_POWERS[loss0.metric]
        dev = self.W[0].device
        self.X = torch.stack([((l.X.to(dev) - m.in_center) / m.in_halfwidth) for l, m in zip(self.data, models)])
        self.Y = torch.stack([((l.Y.to(dev) - m.out_center) / m.out_scale) for l, m in zip(self.data, models)])
        self.B, self.full = loss0.batch_size, loss0.batch_size == loss0.X.shape[0]
        self.xp, self.yp = (self.X, self.Y) if self.full else (torch.empty_like(self.X), torch.empty_like(self.Y))
        self.offset = torch.zeros((), dtype=torch.long, device=dev)
        self.arange = torch.arange(self.B, device=dev)
        self._passes = [None] * S
        # activations' buffers (S, B, width)
        widths = [w.shape[1] for w in self.W]
        buf = lambda w: torch.empty(S, self.B, w, device=dev, dtype=self.W[0].dtype)  # noqa: E731
        self.z, self.a, self.g = [buf(w) for w in widths], [buf(w) for w in widths], [buf(w) for w in widths]
        self.ga = [buf(w.shape[2]) for w in self.W]
        self.diff = buf(widths[-1])
        self.losses = torch.zeros(S, device=dev)
        self.bad = torch.zeros(S, dtype=torch.bool, device=dev)
        t0 = trainers[0]
        self.total, self.lr0, self.schedule, self.lr_final = max(int(total), 1), t0.lr, t0.lr_schedule, t0.lr_final
        self.capture = dev.type == "cuda"
        self.cpu = dev.type == "cpu"
        self._scratch: dict = {}
        self.graph = None

    # ------------------------------------------------------------ host side, before each step
    def _host(self):
        if self.full:
            return
        starts = set()
        for s, loss in enumerate(self.data):
            rows = loss._next_rows()
            starts.add(rows.start)
            if self._passes[s] is not loss._perm:  # a new pass (or a resumed run's first step)
                perm = loss._perm.to(self.X.device)
                torch.index_select(self.X[s], 0, perm, out=self.xp[s])
                torch.index_select(self.Y[s], 0, perm, out=self.yp[s])
                self._passes[s] = loss._perm
                self.offset.fill_(rows.start)
        if len(starts) > 1:
            raise InvalidInputError(f"the cohort's data passes are out of step (batches at rows {sorted(starts)})")

    # ------------------------------------------------------------ the step (no host synchronisation)
    def _lr(self) -> torch.Tensor:
        from .graph import device_lr

        return device_lr(self.opt.step_count, self.schedule, self.lr0, self.lr_final, self.total)

    def _body(self, lr):
        if self.full:
            xs, ys = self.X, self.Y
        else:
            idx = self.offset + self.arange
            self.offset.add_(self.B)
            xs, ys = self.xp.index_select(1, idx), self.yp.index_select(1, idx)
        a_prev = xs
        for i, act in enumerate(self.acts):  # forward: z = a W^T + b, per network
            z = self._bmm(("fwd", i), a_prev, self.W[i].transpose(1, 2), self.z[i], self.b[i])
            a_prev = z if act is None else act.f(z, self.a[i])
        loss, g = power_loss(torch.sub(a_prev, ys, out=self.diff), self.weight, self.power, per_network=True)
        for i in range(len(self.W) - 1, -1, -1):  # backward, per network
            act = self.acts[i]
            if act is not None:
                g = act.backward(g, self.z[i], self.a[i], self.g[i])
            a_in = xs if i == 0 else self.a[i - 1] if self.acts[i - 1] is not None else self.z[i - 1]
            self._bmm(("dW", i), g.transpose(1, 2), a_in, self.gW[i])
            torch.sum(g, 1, out=self.gb[i])
            if i > 0:
                g = torch.bmm(g, self.W[i], out=self.ga[i])
        self.losses.copy_(loss)
        self.bad.logical_or_(~torch.isfinite(loss))
        self.opt.step(lr)

    def _bmm(self, key, A, B, out, bias=None):
        """``out = A @ B (+ bias)`` per network; on a CPU a tall, narrow result (the first layer's weight
        gradient, the output layer's values) is computed as its wide transpose, several times faster there
        (as :class:`~training.engine._Products`; a fixed rule, so every run makes the same choice)."""
        if not (self.cpu and out.shape[2] < _Products.NARROW < out.shape[1]):
            if bias is not None:
                return torch.baddbmm(bias.unsqueeze(1), A, B, out=out)
            return torch.bmm(A, B, out=out)
        tmp = self._scratch.get(key)
        if tmp is None:
            tmp = self._scratch[key] = out.new_empty(out.shape[0], out.shape[2], out.shape[1])
        if bias is not None:
            torch.baddbmm(bias.unsqueeze(2), B.transpose(1, 2), A.transpose(1, 2), out=tmp)
        else:
            torch.bmm(B.transpose(1, 2), A.transpose(1, 2), out=tmp)
        return out.copy_(tmp.transpose(1, 2))

    def run(self, iteration: int) -> None:
        """Step ``iteration`` (0-based) of every network."""
        self._host()
        if not self.capture:  # on a CPU: the learning rate as the lone path computes it
            self._body(self.steppers[0].lr(iteration))
            return
        if self.graph is None:
            self._capture()
        self.graph.replay()

    def _capture(self):
        from .graph import capture

        state = [*self.W, *self.b, *self.opt.state_tensors(), self.offset]
        self.graph = capture(lambda: self._body(self._lr()), state, self.bad)
