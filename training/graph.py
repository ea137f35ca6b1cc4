"""A whole training step that a CUDA graph can replay: static buffers, batches chosen on the device.

On a GPU a small MLP's step is a few dozen short kernels; launched one by one from Python, the GPU waits
for the host most of the time. :class:`StaticStep` arranges the fused engine's step (every loss, the
optimiser, the learning-rate schedule) so that nothing inside it depends on the host:

* data: each pass's permutation is drawn on the host exactly as on the other paths (same generator, same
  batches); at the start of a pass the permuted rows are gathered into a fixed device buffer, and each step
  takes its batch at a device-side offset (``index_select`` at ``offset + arange(B)``, the offset advanced
  on the device);
* collocation points: drawn on the host from the loss's own sampler (the same points as the other paths)
  and copied into a fixed device buffer before the step;
* the learning rate: computed on the device from the optimiser's step count (the schedule's closed form);
* the losses: written into fixed tensors, read (one synchronisation) only when the Trainer validates; a
  non-finite loss is remembered on the device and reported then.

On CUDA the body is captured once and replayed (``torch.cuda.graph``); on a CPU the same body runs
uncaptured, which is how the tests check it against the plain fused path.
"""
from __future__ import annotations

import math
import threading

import torch

from surrogates.losses import DataLoss, GateResidualLoss, InitialConditionLoss, ODEResidualLoss

from .engine import FusedAdam, MLPEngine


class _StaticData:
    """A DataLoss's batches: the pass's permuted rows in a fixed buffer, the batch at a device-side offset."""

    def __init__(self, loss: DataLoss, engine: MLPEngine):
        self.loss, self.engine = loss, engine
        device = engine.W[0].device
        self.Xs, self.Ys = engine.scale_x(loss.X.to(device)), engine.scale_y(loss.Y.to(device))
        self.full = loss.batch_size == loss.X.shape[0]
        self.xs, self.ys = torch.empty_like(self.Xs), torch.empty_like(self.Ys)
        self.offset = torch.zeros((), dtype=torch.long, device=device)
        self.arange = torch.arange(loss.batch_size, device=device)
        self._pass = None  # the permutation whose rows the buffers hold

    def host(self):
        """Before a step: the same bookkeeping as the other paths; a new pass (or the first step of a resumed
        run, which may start mid-pass) gathers its rows and puts the offset where the batch starts."""
        if self.full:
            return
        rows = self.loss._next_rows()
        if self._pass is not self.loss._perm:
            perm = self.loss._perm.to(self.Xs.device)
            torch.index_select(self.Xs, 0, perm, out=self.xs)
            torch.index_select(self.Ys, 0, perm, out=self.ys)
            self.offset.fill_(rows.start)
            self._pass = self.loss._perm

    def body(self, weight):
        from surrogates.losses import FUSED_POWERS

        p = FUSED_POWERS[self.loss.metric]
        if self.full:
            return self.engine.data_step(self.Xs, self.Ys, weight, p)
        idx = self.offset + self.arange
        self.offset.add_(self.loss.batch_size)
        return self.engine.data_step(self.xs.index_select(0, idx), self.ys.index_select(0, idx), weight, p)


class _StaticPoints:
    """Collocation points: drawn on the host by the loss's sampler, copied into a fixed device buffer."""

    def __init__(self, loss, device):
        self.loss = loss
        self.buf = torch.empty(loss.n_points, len(loss.sample.lo), device=device)

    def host(self):
        self.buf.copy_(self.loss.sample(self.loss.n_points, "cpu"), non_blocking=True)


def device_lr(step_count: torch.Tensor, schedule: str, lr0: float, lr_final: float, total: int) -> torch.Tensor:
    """The coming step's learning rate from the optimiser's step count, on the device (as
    :func:`~training.trainer.schedule_factor`, whose closed form it is)."""
    t = torch.clamp(step_count, max=float(total))
    if schedule == "cosine":
        f = lr_final + (1.0 - lr_final) * 0.5 * (1.0 + torch.cos(t * (math.pi / total)))
    elif schedule == "exponential":
        f = torch.exp(t * (math.log(lr_final) / total))
    else:
        f = torch.ones_like(t)
    return f * lr0


_CAPTURE_LOCK = threading.Lock()  # side-by-side threads (training.side_by_side) capture one at a time


def capture(body, state: list, bad: torch.Tensor) -> "torch.cuda.CUDAGraph":
    """A CUDA graph of ``body()``: warmed up twice on a side stream (lazy initialisation, allocations), the
    warm-up undone (every tensor of ``state`` restored, the ``bad`` flag cleared), then captured once. The
    graph is not replayed here: the caller's first replay is the first real step."""
    saved = [t.clone() for t in state]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            body()
    torch.cuda.current_stream().wait_stream(side)
    for dst, src in zip(state, saved):
        dst.copy_(src)
    bad.zero_()
    graph = torch.cuda.CUDAGraph()
    from .side_by_side import in_side_by_side_thread

    if in_side_by_side_thread():
        # other threads run CUDA work meanwhile: capture this thread's stream only ("thread_local": their work
        # does not invalidate it), one capture at a time, and without torch.cuda.graph's device-wide
        # synchronize and cache emptying, which would reach into the other threads' streams
        with _CAPTURE_LOCK:
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                body()
            except BaseException:
                try:
                    graph.capture_end()
                except Exception:  # the capture is broken anyway; the body's error is the one to see
                    pass
                raise
            graph.capture_end()
    else:
        with torch.cuda.graph(graph):
            body()
    return graph


class StaticStep:
    """The fused step of a Trainer with static buffers; :meth:`run` does one step (replayed from a CUDA graph
    on a GPU). ``opt`` is the Trainer's :class:`~training.engine.FusedAdam`."""

    def __init__(self, trainer, engine: MLPEngine, opt: FusedAdam, total: int, capture: bool = True):
        self.t, self.engine, self.opt = trainer, engine, opt
        device = engine.W[0].device
        self.parts = []
        for loss, w in trainer.losses:
            if isinstance(loss, DataLoss):
                static = _StaticData(loss, engine)
                fn = static.body
            elif isinstance(loss, (ODEResidualLoss, InitialConditionLoss)):
                static = _StaticPoints(loss, device)
                at = loss.fused_at(engine)
                fn = (lambda at_, s_: (lambda weight: at_(s_.buf, weight)))(at, static)
            elif isinstance(loss, GateResidualLoss):
                static, fn = None, loss.fused(engine)
            else:
                raise TypeError(f"no static form for {type(loss).__name__}")
            self.parts.append((loss, w, static, fn))
        self.lr0, self.total = trainer.lr, max(int(total), 1)
        self.schedule, self.lr_final = trainer.lr_schedule, trainer.lr_final
        self.terms = {loss.name: torch.zeros((), device=device) for loss, *_ in self.parts}
        self.total_loss = torch.zeros((), device=device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.capture = capture and device.type == "cuda"
        self.graph = None

    def _lr(self) -> torch.Tensor:
        return device_lr(self.opt.step_count, self.schedule, self.lr0, self.lr_final, self.total)

    def _body(self):
        self.engine.zero_grad()
        total = torch.zeros((), device=self.total_loss.device)
        for loss, w, _, fn in self.parts:
            v = fn(w)
            self.terms[loss.name].copy_(v)
            total = total + w * v
        self.total_loss.copy_(total)
        self.bad.logical_or_(~torch.isfinite(total))
        self.opt.step(self._lr())

    def run(self) -> None:
        for _, _, static, _ in self.parts:
            if static is not None:
                static.host()
        if not self.capture:
            self._body()
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()

    def _capture(self):
        params = [p.detach() for p in self.t.model.parameters()]
        offsets = [s.offset for _, _, s, _ in self.parts if isinstance(s, _StaticData)]
        self.graph = capture(self._body, params + self.opt.state_tensors() + offsets, self.bad)


class CapturedObjective:
    """The L-BFGS polish's objective evaluation (the loss and every parameter's ``.grad``, written in place by
    the fused engine) replayed from a CUDA graph: one launch an evaluation instead of the ~100 small kernels
    of the data term and hh_m's gate residual. The parameters are read where they are (L-BFGS moves them in
    place) and the gradients land in the ``.grad`` tensors L-BFGS reads, so nothing else changes.

    ``evaluate()`` returns ``(total, terms)``; it must not depend on the host between calls (a term whose
    points are drawn afresh on every call cannot be captured: the Trainer captures only data terms over
    their whole set and the gate residual on its fixed trace). On a CPU the same body runs uncaptured, which
    is how the tests check the plumbing. Each call returns fresh tensors (the graph's own outputs are
    overwritten by the next replay)."""

    def __init__(self, evaluate, device):
        self.evaluate = evaluate
        self.total: torch.Tensor | None = None
        self.terms: dict | None = None
        self.graph = None
        if torch.device(device).type == "cuda":
            self.graph = capture(self._body, [], torch.zeros((), dtype=torch.bool, device=device))

    def _body(self):
        total, terms = self.evaluate()
        if self.terms is None:  # the first (warm-up or uncaptured) call makes the static outputs, in the
            # objective's own precision (a float64 polish must not see its loss rounded to float32)
            self.total = torch.zeros((), dtype=total.dtype, device=total.device)
            self.terms = {k: torch.zeros((), dtype=v.dtype, device=v.device) for k, v in terms.items()}
        self.total.copy_(total)
        for k, v in terms.items():
            self.terms[k].copy_(v)

    def __call__(self):
        if self.graph is None:
            self._body()
        else:
            self.graph.replay()
        return self.total.clone(), {k: v.clone() for k, v in self.terms.items()}
