"""The Trainer: weighted losses, validation, best checkpoint, resume, and the files users know.

It writes into its output folder:

* ``best_model.pth``: the weights with the best validation metric (a real copy taken at that moment), with
  the architecture, so :func:`surrogates.network.load_checkpoint` rebuilds the network alone;
* ``losses.csv``: iteration, each named loss, total, validation metrics, learning rate, elapsed seconds;
* ``model_stats.txt``: per layer, weight and gradient norms, min and max (vanishing/exploding gradients);
* ``checkpoint.pth``: everything needed to resume (weights, optimiser, schedule, random states, logs).
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from core.errors import InvalidInputError, PipelineError

from core.io import write_text

from surrogates.losses import Loss
from surrogates.network import load_weights, save_checkpoint, state_copy, torch_save

from .paths import REGISTRY as PATHS

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULES = ("constant", "cosine", "exponential")
ADAMW_WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default, kept by the fused path


def schedule_factor(schedule: str, lr_final: float, total: int):
    """``iteration -> lr / lr0``: constant; cosine from 1 to ``lr_final`` over ``total`` steps; exponential to
    ``lr_final`` at ``total``. One closed form for both training paths (and any resume point)."""
    total = max(int(total), 1)
    if schedule == "cosine":
        return lambda it: lr_final + (1.0 - lr_final) * 0.5 * (1.0 + math.cos(math.pi * min(it, total) / total))
    if schedule == "exponential":
        return lambda it: lr_final ** (it / total)
    return lambda it: 1.0


class _Stepper:
    """The first-order optimiser with its learning-rate schedule, behind one interface for both paths:
    ``torch.optim`` (+ ``LambdaLR``), or, on the fused path with Adam/AdamW, the lean :class:`FusedAdam`."""

    def __init__(self, trainer, total: int, fused: bool):
        self.factor = schedule_factor(trainer.lr_schedule, trainer.lr_final, total)
        self.lr0, self.name = trainer.lr, trainer.optimizer_name
        self.fused = fused and self.name in ("adam", "adamw")
        params = list(trainer.model.parameters())
        if self.fused:
            from .engine import FusedAdam

            self.opt = FusedAdam(params, weight_decay=ADAMW_WEIGHT_DECAY if self.name == "adamw" else 0.0,
                                 decoupled=self.name == "adamw")
            self.sched = None
        else:
            self.opt = OPTIMIZERS[self.name](params, lr=self.lr0)
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.factor)

    def lr(self, iteration: int) -> float:
        return self.lr0 * self.factor(iteration)

    def zero_grad(self):
        if not self.fused:
            self.opt.zero_grad(set_to_none=True)

    def step(self, iteration: int):
        """The update of step ``iteration`` (0-based), at that step's learning rate."""
        if self.fused:
            self.opt.step(self.lr(iteration))
        else:
            self.opt.step()
            self.sched.step()

    def state_dict(self) -> dict:
        return {"fused": self.fused, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched is not None else None}

    def load_state_dict(self, s: dict) -> None:
        if s.get("fused", False) != self.fused:
            raise InvalidInputError("the checkpoint was written by the other training path (fused vs autograd)")
        self.opt.load_state_dict(s["optimizer"])
        if self.sched is not None:
            self.sched.load_state_dict(s["scheduler"])


_NOTED: set = set()


def _note_once(message: str) -> None:
    """A message on stderr, once per process."""
    if message not in _NOTED:
        _NOTED.add(message)
        print(message, file=sys.stderr)


class TrainingDivergedError(PipelineError, FloatingPointError):
    """A loss became NaN or infinite; the best checkpoint so far is kept."""


class Trainer:
    """Train ``model`` on a weighted sum of losses.

    Parameters
    ----------
    model : the network (its device is where training happens).
    output_folder : where the files above are written.
    validation : callable ``model -> dict`` of metrics (computed under ``torch.no_grad``), or ``None``.
    monitor : the validation metric that picks the best checkpoint (lower is better); without validation,
        the total training loss.
    val_every : validate (and write a resumable checkpoint) every this many iterations.
    optimizer, lr, lr_schedule, lr_final : Adam by default; schedule ``constant``, ``cosine`` (to
        ``lr * lr_final``) or ``exponential`` (to ``lr * lr_final`` at the end).
    patience : stop after this many validations without improvement (``None``: never).
    lbfgs_iterations : optional L-BFGS polish after the first-order optimiser, on the same losses.
    lbfgs_dtype : ``"float32"`` (the model's own precision), ``"float64"``: the polish runs on a float64 copy
        of a float32 model (the fused engine on torch operators) and copies each round's weights back, where
        in float32 it stalls at a point where the data and physics gradients cancel to rounding (hh_m); or
        ``"auto"``: the model's precision until the polish stalls there (from steepest descent no step
        changes the loss), then float64 for the iterations left. Float64 needs the fused engine; with
        autograd the polish stays in the model's precision (said once).
    seed : seeds torch for anything the losses do not seed themselves.
    resume : continue from ``checkpoint.pth`` in the output folder when there is one.
    progress : ``True``: a progress line (iterations/s, time left); ``False``: none; ``None`` (default): the line
        on a terminal, one line per validation otherwise (a job's log).
    fingerprint : what the run is (settings, data); a ``checkpoint.pth`` written for another is not resumed.
    checkpoint_meta : extra entries for the meta of ``best_model.pth`` (e.g. its ``provenance``).
    engine : ``"auto"`` (the hand-written :mod:`~training.engine` when the model is an ``MLP`` and every loss
        has a fused form, else autograd; on a CPU, for a float32 model, with its mean-squared-error data steps
        and closed-form residual steps as compiled calls, :mod:`~training.cpu_step`, where they can be built),
        ``"fused"`` (the engine on torch operators only; required: an error names the loss that has none),
        ``"cpp"`` (the engine with the compiled CPU steps; an error says why where they cannot be built),
        ``"autograd"``, or
        ``"triton"``: the fused engine with each mean-squared-error data step in one Triton kernel, and an ODE
        residual step too where the kernel writes the model's residual (:mod:`~training.triton_step`; a CUDA
        device, or the CPU under ``TRITON_INTERPRET=1``; the data step on an H200 2.6x the fused step's
        iterations/s for the 3x64 net, captured; the residual step never run on a GPU). All paths compute the same losses and gradients (tests: to 1e-5).
    capture : run the fused step as one static step (:mod:`~training.graph`) replayed from a CUDA graph:
        ``"auto"`` on a GPU with the fused engine and Adam/AdamW, ``True`` (on a CPU the static step runs
        uncaptured, as the tests do) or ``False``. Losses are then read at validation only.
    """

    def __init__(self, model, output_folder, validation: Callable | None = None, monitor: str = "val_mae",
                 val_every: int = 100, optimizer: str = "adam", lr: float = 1e-3, lr_schedule: str = "constant",
                 lr_final: float = 0.01, patience: int | None = None, lbfgs_iterations: int = 0, seed: int = 0,
                 resume: bool = True, progress: bool | None = None, fingerprint: dict | None = None,
                 lbfgs_dtype: str = "float32", checkpoint_meta: dict | None = None, engine: str = "auto", capture="auto",
                 lbfgs_weight_decay: float = 0.0):
        if optimizer not in OPTIMIZERS:
            raise InvalidInputError(f"unknown optimizer {optimizer!r}; valid: {sorted(OPTIMIZERS)}")
        if lr_schedule not in SCHEDULES:
            raise InvalidInputError(f"unknown lr_schedule {lr_schedule!r}; valid: {list(SCHEDULES)}")
        if val_every < 1:
            raise InvalidInputError(f"val_every must be >= 1, got {val_every}")
        if engine not in PATHS:  # the training paths by name (training.paths)
            raise InvalidInputError(f"unknown engine {engine!r}; valid: {list(PATHS)}")
        self.engine = engine
        if capture not in ("auto", True, False):
            raise InvalidInputError(f"capture must be 'auto', True or False, got {capture!r}")
        self.capture = capture
        self.model, self.out = model, Path(output_folder)
        self.validation, self.monitor, self.val_every = validation, monitor, int(val_every)
        self.optimizer_name, self.lr, self.lr_schedule, self.lr_final = optimizer, float(lr), lr_schedule, float(lr_final)
        self.patience, self.lbfgs_iterations, self.seed = patience, int(lbfgs_iterations), int(seed)
        if lbfgs_dtype not in ("float32", "float64", "auto"):
            raise InvalidInputError(f"lbfgs_dtype must be 'float32', 'float64' or 'auto', got {lbfgs_dtype!r}")
        self.lbfgs_dtype = lbfgs_dtype
        if isinstance(lbfgs_weight_decay, bool) or not isinstance(lbfgs_weight_decay, (int, float)) \
                or not (math.isfinite(lbfgs_weight_decay) and lbfgs_weight_decay >= 0):
            raise InvalidInputError(f"lbfgs_weight_decay must be a finite number >= 0, got {lbfgs_weight_decay!r}")
        self.lbfgs_weight_decay = float(lbfgs_weight_decay)
        self.resume = resume
        # what the run is (settings, data): a checkpoint.pth written for anything else is not resumed
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str)) if fingerprint else None
        # a progress line: rewritten in place on a terminal, one line per validation in a log file, or none
        self.progress = ("tty" if sys.stderr.isatty() else "log") if progress is None else ("tty" if progress else False)
        self.checkpoint_meta = dict(checkpoint_meta or {})
        self.losses: list[tuple[Loss, float]] = []
        self.iteration = 0
        self.best_metric = math.inf
        self.best_iteration = -1
        self.best_state: dict | None = None
        self.rows: list[dict] = []
        self._engine = None  # the fused engine of the first-order steps, when they use one
        self.elapsed = 0.0
        self._stale = 0
        self._resumed_from: int | None = None
        self.label = ""  # a prefix of the progress line (a cohort names each network's folder)
        torch.manual_seed(self.seed)

    # ------------------------------------------------------------------ set-up
    def add_loss(self, loss: Loss, weight: float = 1.0) -> None:
        """Add a loss term with its weight. Names must be unique (they are columns of losses.csv)."""
        if not isinstance(loss, Loss):
            raise InvalidInputError(f"add_loss takes a Loss, got {type(loss).__name__}")
        if any(l.name == loss.name for l, _ in self.losses):
            raise InvalidInputError(f"a loss named {loss.name!r} was already added; give it another name")
        self.losses.append((loss, float(weight)))

    def _fused_steps(self):
        """The losses' fused steps on one :class:`~training.engine.MLPEngine`, or ``None`` for autograd."""
        from .engine import MLPEngine
        from surrogates.network import MLP

        path = PATHS[self.engine]
        if not path.fused:
            return None
        required = path.required
        if not isinstance(self.model, MLP):
            if required:
                raise InvalidInputError(f"engine {self.engine!r} trains surrogates.network.MLP, not {type(self.model).__name__}")
            return None
        eng = MLPEngine(self.model, max(l.fused_rows() for l, _ in self.losses) or 1)
        # the kernels first: a loss's fused form looks at them (the ODE residual's gradient is compiled
        # too where the compiled CPU steps train, training.cpu_residual)
        path.kernels(self, eng, polish=False)
        steps = [l.fused(eng) for l, _ in self.losses]
        missing = [l.name for (l, _), st in zip(self.losses, steps) if st is None]
        if missing:
            if required:
                raise InvalidInputError(f"engine {self.engine!r}: loss(es) {missing} have no fused form; use engine 'autograd'")
            return None
        self._engine = eng
        return self._joint_gate(eng, steps)

    # ------------------------------------------------------------------ one step
    def _objective(self):
        terms = {}
        total = 0.0
        for loss, w in self.losses:
            v = loss(self.model)
            terms[loss.name] = v
            total = total + w * v
        return total, terms

    def _objective_value(self):
        """The objective's value alone (physics losses differentiate the network, so autograd stays on; the
        parameters' gradients are left as they were)."""
        with torch.enable_grad():
            total, terms = self._objective()
        return total.detach(), {n: v.detach() for n, v in terms.items()}

    def _fused_objective(self, steps, engine=None):
        """The same objective as :meth:`_objective`, each term's gradient added by the engine."""
        (engine or self._engine).zero_grad()
        terms = {}
        total = None
        for (loss, w), step in zip(self.losses, steps):
            v = step(w)
            terms[loss.name] = v
            wv = v if w == 1.0 else w * v  # no tensor operation for a lone unit-weight term (~10 us a step)
            total = wv if total is None else total + wv
        return total, terms

    def _static_step(self, fused, stepper, total):
        """The captured (or, on a CPU, static but uncaptured) form of the fused step, when it applies."""
        if fused is None or not stepper.fused or self.capture is False:
            return None
        if self.capture == "auto" and self._engine.W[0].device.type != "cuda":
            return None
        from .graph import StaticStep

        return StaticStep(self, self._engine, stepper.opt, total)

    def _check_finite(self, total, terms, since: int | None = None):
        if since is not None or not math.isfinite(float(total.detach())):  # ~1 us; torch.isfinite ~7
            bad = [n for n, v in terms.items() if not torch.isfinite(v)]
            when = f"between iterations {max(since, 0)} and {self.iteration}" if since is not None else \
                f"at iteration {self.iteration}"
            raise TrainingDivergedError(
                f"training stopped {when}: loss {', '.join(bad) or 'total'} became "
                f"{float(total.detach())}; the best checkpoint (iteration {self.best_iteration}) was kept in "
                f"{self.out / 'best_model.pth'}. Lower the learning rate or check the data.")

    def _validate(self) -> dict:
        if self.validation is None:
            return {}
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in self.validation(self.model).items()}
        self.model.train(was)
        return metrics

    def _record(self, terms, total, lr, metrics):
        score = metrics.get(self.monitor, float(total)) if self.validation else float(total)
        improved = score < self.best_metric
        if improved:
            self.best_metric, self.best_iteration = score, self.iteration
            self.best_state = state_copy(self.model)
            save_checkpoint(self.model, self.out / "best_model.pth", self.best_state, self._best_meta())
            self._stale = 0
        else:
            self._stale += 1
        row = {"iteration": self.iteration, **{n: float(v) for n, v in terms.items()}, "total": float(total),
               **metrics, "lr": lr, "elapsed_s": round(self.elapsed, 4)}
        self.rows.append(row)
        return improved

    # ------------------------------------------------------------------ files
    def _best_meta(self) -> dict:
        return {**self.checkpoint_meta, "iteration": self.best_iteration, self.monitor: self.best_metric}

    def _write_losses(self):
        if not self.rows:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in self.rows for k in r)))
        w.writeheader()
        w.writerows(self.rows)
        write_text(self.out / "losses.csv", buf.getvalue())

    def _write_stats(self):
        lines = [f"# iteration {self.iteration}; per layer: weight and gradient norms, min and max",
                 f"{'layer':<28s}{'|W|':>12s}{'|grad W|':>12s}{'min W':>12s}{'max W':>12s}{'|grad|/|W|':>12s}"]
        for name, p in self.model.named_parameters():
            g, p = p.grad, p.detach()
            gn = float(g.norm()) if g is not None else float("nan")
            wn = float(p.norm())
            lines.append(f"{name:<28s}{wn:12.4e}{gn:12.4e}{float(p.min()):12.4e}{float(p.max()):12.4e}"
                         f"{gn / wn if wn else float('nan'):12.4e}")
        text = "\n".join(lines) + "\n"
        write_text(self.out / "model_stats.txt", text)

    def _save_resume(self, stepper):
        torch_save({
            "iteration": self.iteration, "model": state_copy(self.model), "stepper": stepper.state_dict(),
            "losses": [l.state_dict() for l, _ in self.losses],
            "torch_rng": torch.get_rng_state(), "best_metric": self.best_metric, "best_iteration": self.best_iteration,
            "best_state": self.best_state, "rows": self.rows, "elapsed": self.elapsed, "stale": self._stale,
            "fingerprint": self.fingerprint,
        }, self.out / "checkpoint.pth")

    def _load_resume(self, stepper) -> bool:
        path = self.out / "checkpoint.pth"
        if not (self.resume and path.exists()):
            return False
        try:
            s = torch.load(path, map_location="cpu", weights_only=False)
            if s.get("fingerprint") != self.fingerprint:
                old, new = s.get("fingerprint") or {}, self.fingerprint or {}
                keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["(none recorded)"]
                print(f"not resuming from {path}: it was written for a different run (differs in: "
                      f"{', '.join(keys)}); starting over", file=sys.stderr)
                return False
            if s.get("stepper", {}).get("fused") != stepper.fused:
                print(f"not resuming from {path}: it was written by the other training path (fused vs autograd); "
                      "starting over", file=sys.stderr)
                return False
            load_weights(self.model, s["model"], str(path))
            stepper.load_state_dict(s["stepper"])
        except InvalidInputError:
            raise
        except Exception as exc:
            raise InvalidInputError(f"cannot resume from {path} ({type(exc).__name__}: {exc}); delete it to start over") from exc
        for (loss, _), st in zip(self.losses, s["losses"]):
            loss.load_state_dict(st)
        torch.set_rng_state(s["torch_rng"])
        self.iteration, self.best_metric, self.best_iteration = s["iteration"], s["best_metric"], s["best_iteration"]
        self.best_state, self.rows, self.elapsed, self._stale = s["best_state"], s["rows"], s["elapsed"], s["stale"]
        return True

    # ------------------------------------------------------------------ training
    def train(self, num_iterations: int) -> dict:
        """Run until ``num_iterations`` first-order steps are done (counting a resumed run's), then the
        optional L-BFGS polish. Returns a summary; the best weights are loaded into the model."""
        fused, stepper, t0 = self._start(num_iterations)
        static = self._static_step(fused, stepper, num_iterations)
        stopped_early = False
        while self.iteration < num_iterations:
            if static is not None:
                static.run()
                total, terms = static.total_loss, static.terms
                if not static.capture:
                    self._check_finite(total, terms)
            elif fused is not None:
                total, terms = self._fused_objective(fused)
                self._check_finite(total, terms)
                stepper.step(self.iteration)
            else:
                stepper.zero_grad()
                total, terms = self._objective()
                self._check_finite(total, terms)
                total.backward()
                stepper.step(self.iteration)
            self.iteration += 1
            if self.iteration % self.val_every == 0 or self.iteration == num_iterations:
                if static is not None and static.capture and bool(static.bad):
                    self._check_finite(total, terms, since=self.iteration - self.val_every)
                if self._validation_event(total, terms, stepper, num_iterations, t0):
                    stopped_early = True
                    break
        return self._finish(stopped_early, t0)

    def _start(self, num_iterations: int):
        """Before the first step: checks, the fused engine's steps (or ``None``), the optimiser, resume; scores
        the untrained network when there is nothing to train. Returns ``(fused, stepper, t0)``."""
        if not self.losses:
            raise InvalidInputError("add at least one loss with add_loss before train")
        if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 0:
            raise InvalidInputError(f"num_iterations must be an integer >= 0, got {num_iterations!r}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.model.train()
        fused = self._fused_steps()
        stepper = _Stepper(self, num_iterations, fused is not None)
        resumed = self._load_resume(stepper)
        self._resumed_from = self.iteration if resumed else None
        if resumed:
            print(f"resuming from {self.out / 'checkpoint.pth'} at iteration {self.iteration}", file=sys.stderr)
        t0 = time.perf_counter() - self.elapsed
        if num_iterations == 0 and not self.rows:  # nothing to train: score and keep the initial network
            total, terms = self._objective_value()
            self._record(terms, total, self.lr, self._validate())
            self._write_stats()
        return fused, stepper, t0

    def _validation_event(self, total, terms, stepper, num_iterations: int, t0: float) -> bool:
        """Every ``val_every`` steps (and at the last): validate, keep the best, write the files and the resume
        point. Returns True when patience has run out."""
        self.elapsed = time.perf_counter() - t0
        self._record({n: v.detach() for n, v in terms.items()}, total.detach(), stepper.lr(self.iteration),
                     self._validate())
        self._write_stats()
        self._write_losses()
        self._save_resume(stepper)
        if self.progress:
            self._show(num_iterations)
        return self.patience is not None and self._stale >= self.patience

    def _finish(self, stopped_early: bool, t0: float) -> dict:
        """After the first-order steps: the L-BFGS polish, the final files, the best weights into the model."""
        if self.lbfgs_iterations and not stopped_early:
            self._lbfgs(t0)
            self.elapsed = time.perf_counter() - t0
        if self.progress == "tty":
            print(file=sys.stderr)
        self._write_losses()
        if self.best_state is not None:  # rewritten at the end too: a resumed run may never improve again
            save_checkpoint(self.model, self.out / "best_model.pth", self.best_state, self._best_meta())
            load_weights(self.model, self.best_state)
        return {"iterations": self.iteration, "best_iteration": self.best_iteration, "best_metric": self.best_metric,
                "stopped_early": stopped_early, "resumed": self._resumed_from is not None,
                "resumed_from": self._resumed_from, "train_seconds": self.elapsed, "path": self.path()}

    def path(self) -> str:
        """Which arithmetic the first-order steps ran on (recorded in a run's metrics.json): ``autograd``,
        ``fused engine`` (torch operators), ``fused engine, compiled CPU steps`` or ``fused engine, Triton data
        step``."""
        eng = self._engine
        if eng is None:
            return "autograd"
        kind = type(eng.data_kernel).__name__
        return "fused engine" + {"CpuDataStep": ", compiled CPU steps", "TritonDataStep": ", Triton data step"}.get(kind, "")

    def _lbfgs(self, t0: float):
        # a deterministic objective: data losses use their whole set (physics losses still resample)
        saved = {id(l): l.batch_size for l, _ in self.losses if hasattr(l, "batch_size") and hasattr(l, "X")}
        for l, _ in self.losses:
            if id(l) in saved:
                l.batch_size = l.X.shape[0]
        try:
            self._lbfgs_steps(t0)
        finally:
            for l, _ in self.losses:
                if id(l) in saved:
                    l.batch_size = saved[id(l)]

    LBFGS_CHUNK = 8192  # rows per engine call in the polish's full-set data terms

    def _cpu_kernels(self, eng) -> None:
        """``eng``'s data and residual steps as compiled CPU calls (:mod:`~training.cpu_step`): always with
        engine ``"cpp"`` (an error says why they cannot be used), with ``"auto"`` where they apply and build (a
        float32 or float64 model on the CPU: the first-order steps, or a float64 polish's copy); otherwise the
        engine keeps its torch operators."""
        if self.engine not in ("cpp", "auto"):
            return
        from .cpu_step import CpuDataStep, CpuStepUnavailable, CpuTangentStep, residual_steps

        p = eng.W[0]
        if self.engine == "auto" and (p.device.type != "cpu" or p.dtype not in (torch.float32, torch.float64)):
            return
        try:
            eng.data_kernel, eng.tangent_kernel = CpuDataStep(eng), CpuTangentStep(eng)
            eng.residual_kernel = residual_steps(eng)
        except CpuStepUnavailable as e:
            if self.engine == "cpp":
                raise InvalidInputError(f"engine 'cpp': {e}") from None
            _note_once(f"{e}; training with the engine's torch operators instead")

    def _lbfgs_fused(self, model=None):
        """``(engine, steps)`` for the polish's full-set objective on ``model`` (the Trainer's, or its float64
        copy) through the fused engine (data terms over every row, in chunks; physics terms as in the
        first-order steps), or ``None`` for autograd: when the first-order steps did not use the engine, or a
        term has no fused form."""
        if self._engine is None:
            return None
        from .engine import MLPEngine

        full = [hasattr(l, "fused_full") and hasattr(l, "X") for l, _ in self.losses]
        rows = max(min(l.X.shape[0], self.LBFGS_CHUNK) if f else l.fused_rows() for (l, _), f in zip(self.losses, full))
        model = self.model if model is None else model
        eng = MLPEngine(model, rows)
        PATHS[self.engine].kernels(self, eng, polish=True)  # e.g. the model's, or its float64 copy's, compiled CPU steps
        steps = [l.fused_full(eng) if f else l.fused(eng) for (l, _), f in zip(self.losses, full)]
        if any(st is None for st in steps):
            return None
        return eng, self._joint_gate(eng, steps)

    def _joint_gate(self, eng, steps: list) -> list:
        """hh_m: a full-set data term and the gate residual in one engine pass where the data rows are trace
        points (:meth:`~surrogates.losses.GateResidualLoss.fused_with_data`); otherwise ``steps`` as given."""
        from surrogates.losses import DataLoss, GateResidualLoss

        if len(self.losses) == 2 and isinstance(self.losses[0][0], DataLoss) \
                and isinstance(self.losses[1][0], GateResidualLoss):
            (data, wd), (gate, wg) = self.losses
            if data.batch_size == data.X.shape[0]:
                joint = gate.fused_with_data(eng, data, wd, wg, steps[1])
                if joint is not None:
                    return list(joint)
        return steps

    def _polish_objective(self, fused):
        """The polish's fused objective ``() -> (total, terms)``: replayed from a CUDA graph
        (:class:`~training.graph.CapturedObjective`) where the first-order steps would be captured and every
        term is deterministic (data terms over their whole set, the gate residual on its trace); otherwise
        (and if the capture fails, which is reported) evaluated op by op. ``None`` on the autograd path."""
        if fused is None:
            return None
        eng, steps = fused

        def plain():
            return self._fused_objective(steps, eng)

        from surrogates.losses import DataLoss, GateResidualLoss

        device = eng.W[0].device
        fixed = all(isinstance(l, (DataLoss, GateResidualLoss)) for l, _ in self.losses)
        if self.capture is False or not fixed or (self.capture == "auto" and device.type != "cuda"):
            return plain
        from .graph import CapturedObjective

        try:
            return CapturedObjective(plain, device)
        except RuntimeError as exc:  # e.g. an operator the capture refuses: the polish still runs, uncaptured
            print(f"{self.label}L-BFGS objective not captured ({type(exc).__name__}: {exc}); evaluated op by op",
                  file=sys.stderr, flush=True)
            return plain

    def _polish_setup(self, wide: bool, why: str = ""):
        """``(model, optimiser, objective)`` for the polish: on the Trainer's model, or (``wide``) on a float64
        copy of it where the fused engine evaluates the objective (otherwise the model's own, said once)."""
        from .lbfgs import LBFGS  # torch's algorithm, the two-loop recursion without host synchronisations

        model = copy.deepcopy(self.model).to(torch.float64) if wide else self.model
        fused = self._lbfgs_fused(model)  # the engine: no create_graph pass for physics terms, no autograd graph
        if fused is None and model is not self.model:
            _note_once(f"lbfgs_dtype {self.lbfgs_dtype!r} needs the fused engine (the losses' autograd forms run in "
                       f"the model's precision); the polish runs in {self._dtype_name()}")
            model = self.model
        elif model is not self.model:
            print(f"{self.label}L-BFGS polish in float64 from iteration {self.iteration} ({why + '; ' if why else ''}a "
                  f"copy of the {self._dtype_name()} model, each round's weights rounded back)", file=sys.stderr, flush=True)
        opt = LBFGS(model.parameters(), lr=1.0, max_iter=20, history_size=50, line_search_fn="strong_wolfe")
        return model, opt, self._polish_objective(fused)

    def _penalised(self, model, total, terms, gradients: bool):
        """The polish's objective with its weight penalty ``lbfgs_weight_decay / 2 * sum(w**2)`` over every
        parameter of ``model`` (a term ``weight_decay`` of its own; ``gradients``: added to each ``.grad`` too);
        unchanged without one."""
        lam = self.lbfgs_weight_decay
        if not lam:
            return total, terms
        with torch.no_grad():
            params = list(model.parameters())
            penalty = 0.5 * lam * sum(torch.sum(p * p) for p in params)
            if gradients:
                for p in params:
                    p.grad.add_(p, alpha=lam)
        return total + penalty.to(total.dtype), {**terms, "weight_decay": penalty}

    def _lbfgs_steps(self, t0: float):
        narrow = next(self.model.parameters()).dtype != torch.float64
        model, opt, objective = self._polish_setup(narrow and self.lbfgs_dtype == "float64")
        rounds = max(1, self.lbfgs_iterations // 20)
        end = self.iteration + 20 * rounds
        # training.lbfgs.LBFGS reads every loss it gets back to the host anyway and hands it to check_value:
        # the finiteness test then costs no read of its own (on a GPU a read makes the device wait)
        deferred = hasattr(opt, "check_value")
        last = {}

        def check(value: float):
            if not math.isfinite(value):
                self._check_finite(*last["v"])  # raises, naming the term

        for r in range(rounds):
            if deferred:  # each round: after an `auto` switch to float64 the optimiser is a new one
                opt.check_value = check
            def closure():
                if objective is not None:  # writes each parameter's .grad, which L-BFGS reads
                    total, terms = objective()
                else:
                    opt.zero_grad(set_to_none=True)
                    total, terms = self._objective()
                if objective is None:
                    total.backward()
                total, terms = self._penalised(model, total.detach(), terms, gradients=True)
                last["v"] = (total, terms)
                if not deferred:
                    self._check_finite(total, terms)
                return total

            opt.step(closure)
            if model is not self.model:  # validation, checkpoints and the best weights are the model's own
                with torch.no_grad():
                    for mine, polished in zip(self.model.parameters(), model.parameters()):
                        mine.copy_(polished)
            self.iteration += 20
            total, terms = objective() if objective is not None else self._objective_value()
            total, terms = self._penalised(model, total, terms, gradients=False)
            self._check_finite(total, terms)
            self.elapsed = time.perf_counter() - t0
            self._record(terms, total, float("nan"), self._validate())
            converged = getattr(opt, "converged", False)  # torch.optim.LBFGS (timed by gpu_check) has no such flag
            if self.iteration % self.val_every < 20 or converged or r == rounds - 1:  # as often as the first-order steps
                self._write_losses()
                if self.progress:
                    self._show(end)
            if converged:
                if r == rounds - 1:
                    break
                if self.lbfgs_dtype == "auto" and narrow and model is self.model:
                    setup = self._polish_setup(True, f"stalled in {self._dtype_name()}: from steepest descent no "
                                                     f"step changed the loss")
                    if setup[0] is not self.model:
                        model, opt, objective = setup
                        continue
                print(f"{self.label}L-BFGS converged at iteration {self.iteration} (from steepest descent no "
                      f"step changes the loss); the polish stops there", file=sys.stderr, flush=True)
                break
        self._write_stats()

    def _dtype_name(self) -> str:
        return str(next(self.model.parameters()).dtype).replace("torch.", "")

    def _show(self, total):
        last = self.rows[-1]
        metric = f" {self.monitor} {last[self.monitor]:.3e}" if self.monitor in last else ""
        rate = self.iteration / self.elapsed if self.elapsed > 0 else float("nan")
        left = (total - self.iteration) / rate if rate > 0 else float("nan")
        text = (f"{self.label}[{self.iteration}/{total}] loss {last['total']:.3e}{metric} best@{self.best_iteration} "
                f"{rate:.0f} it/s, {left:.0f} s left")
        sys.stderr.write(f"\r{text}   " if self.progress == "tty" else text + "\n")
        sys.stderr.flush()
