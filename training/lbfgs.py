"""L-BFGS with the two-loop recursion as a handful of matrix operations, for small networks on a GPU.

``torch.optim.LBFGS`` runs the two-loop recursion as ``2 * history`` dot products and vector updates, each
step size read back to the host (``add_(..., alpha=tensor)``): with the polish's history of 50, ~650 operators
and ~109 host reads an iteration (counted on the CPU), 5.6-6.7 ms an iteration on an H100 for hh_m's small
networks (``make gpu-check``'s lbfgs step, benchmarks/reference/recorded.md), so hh_m's polishes were most of the grid's
training time on a GPU.

:class:`LBFGS` is the same algorithm (same memory update, initial step, strong-Wolfe line search, stopping
tests and state carried between ``step`` calls; it subclasses torch's for its parameter handling) with the
recursion written in closed form. With the history ``s_i, y_i`` (oldest first) in the rows of ``S`` and
``Y``, ``rho_i = 1 / (y_i . s_i)`` and ``A = S Y^T``, the first loop's coefficients solve the unit upper
triangular system ``(I + diag(rho) triu(A, 1)) a = -diag(rho) S g``; then ``r0 = H0 (-g - Y^T a)``, the second
loop's ``c = a - b`` solves the unit lower triangular ``(I + diag(rho) tril(A^T, -1)) c = a - rho * (Y r0)``,
and the direction is ``r0 + S^T c``: two products with the history, two small triangular solves, no host
synchronisation (~200 operators and ~9 host reads an iteration, those of the line search and the stopping
tests; 2.4-3.0 ms on the H100). Equal to the loops in exact arithmetic; in float64 the iterates match torch's to rounding
(tests/test_lbfgs.py).

The strong-Wolfe line search is torch's, rewritten on Python floats: each evaluation returns the loss,
``g.d`` and ``max|g|`` in one read back to the host (torch's keeps ``g.d`` a 0-d tensor, so each of its
tests and interpolations is a read), the iteration's ``g.d`` and ``max|d|`` come in one more, and the
parameters move, are saved and restored as one flat vector (one kernel, not one per tensor). Counted on the
CPU for a 2x64 net outside the objective: ~3.2 host reads and ~51 kernels an iteration, from ~10 and ~95
(2026-11-28; on a GPU each read makes the device wait for the host: not yet measured there).
"""
from __future__ import annotations

import math

import torch


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """torch.optim.lbfgs's cubic interpolation, on Python floats (the same IEEE double arithmetic as its
    float64 0-d tensors, in the same order)."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _strong_wolfe(obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25, d_norm=0.0,
                  g_max=0.0):
    """torch.optim.lbfgs's strong-Wolfe line search (same brackets, interpolation and tests), with every
    scalar a Python float read once per evaluation: ``obj_func(x, t, d)`` returns ``(f, g, g.d, max|g|)``.
    torch's keeps ``g.d`` as a 0-d tensor, so each test and interpolation reads it back to the host (three to
    six reads an evaluation); here one read an evaluation. Returns ``(f, g, t, evaluations, max|g|)``."""
    g = g.clone(memory_format=torch.contiguous_format)
    f_new, g_new, gtd_new, gm_new = obj_func(x, t, d)
    ls_func_evals = 1
    t_prev, f_prev, g_prev, gtd_prev, gm_prev = 0, f, g, gtd, g_max
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f, bracket_gtd = [t_prev, t], [f_prev, f_new], [gtd_prev, gtd_new]
            bracket_g, bracket_gm = [g_prev, g_new.clone(memory_format=torch.contiguous_format)], [gm_prev, gm_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g, bracket_gm = [t], [f_new], [g_new], [gm_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f, bracket_gtd = [t_prev, t], [f_prev, f_new], [gtd_prev, gtd_new]
            bracket_g, bracket_gm = [g_prev, g_new.clone(memory_format=torch.contiguous_format)], [gm_prev, gm_new]
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, gtd_prev, gm_prev = tmp, f_new, gtd_new, gm_new
        g_prev = g_new.clone(memory_format=torch.contiguous_format)
        f_new, g_new, gtd_new, gm_new = obj_func(x, t, d)
        ls_func_evals += 1
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g, bracket_gm = [0, t], [f, f_new], [g, g_new], [g_max, gm_new]

    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new, gtd_new, gm_new = obj_func(x, t, d)
        ls_func_evals += 1
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos], bracket_gtd[high_pos] = t, f_new, gtd_new
            bracket_g[high_pos] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gm[high_pos] = gm_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
                bracket_gm[high_pos] = bracket_gm[low_pos]
            bracket[low_pos], bracket_f[low_pos], bracket_gtd[low_pos] = t, f_new, gtd_new
            bracket_g[low_pos] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gm[low_pos] = gm_new
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals, bracket_gm[low_pos]


def _push(rows, v, keep: int):
    """``rows`` (or nothing) with ``v`` appended as the newest row, the oldest dropped past ``keep`` rows."""
    v = v[None]
    return v if rows is None else torch.cat([rows[max(0, len(rows) + 1 - keep):], v])


class LBFGS(torch.optim.LBFGS):
    """Drop-in for :class:`torch.optim.LBFGS` (real, dense parameters; ``line_search_fn`` None or
    ``"strong_wolfe"``)."""

    #: called with every loss value read back (a float) before the search uses it, e.g. to stop at a NaN
    #: without a read of its own; ``None``: nothing
    check_value = None

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        if any(torch.is_complex(p) for p in self._params):
            raise ValueError("training.lbfgs.LBFGS takes real parameters only")

    @staticmethod
    def _direction(g, S, Y, rho, h_diag):
        """``-H g`` for the L-BFGS inverse Hessian of history ``S, Y`` (rows oldest first)."""
        A = S @ Y.T
        k = A.shape[0]
        eye = torch.eye(k, dtype=g.dtype, device=g.device)
        rc = rho[:, None]
        a = torch.linalg.solve_triangular(eye + rc * torch.triu(A, 1), (-(rho * (S @ g)))[:, None], upper=True,
                                          unitriangular=True)[:, 0]
        r0 = (-g - Y.T @ a) * h_diag
        c = torch.linalg.solve_triangular(eye + rc * torch.tril(A.T, -1), (a - rho * (Y @ r0))[:, None],
                                          upper=False, unitriangular=True)[:, 0]
        return r0 + S.T @ c

    # the parameters as one flat vector: one kernel each way instead of one per parameter tensor
    def _flat_params(self) -> torch.Tensor:
        return torch.cat([p.reshape(-1) for p in self._params])

    def _views(self, flat: torch.Tensor) -> list:
        out, offset = [], 0
        for p in self._params:
            out.append(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        return out

    def _add_grad(self, step_size, update) -> None:  # type: ignore[override]
        torch._foreach_add_(self._params, self._views(update), alpha=step_size)

    def _set_flat(self, flat: torch.Tensor) -> None:
        torch._foreach_copy_(self._params, self._views(flat))

    def _evaluate(self, closure, x, t, d):
        """The objective at ``x + t d`` (the parameters put back to ``x`` after): ``(f, g, g.d, max|g|)``, the
        three numbers in one read back to the host."""
        self._add_grad(t, d)
        loss = closure()
        g = self._gather_flat_grad()
        f, gtd, gmax = torch.stack([loss.detach().double(), g.dot(d).double(), g.abs().max().double()]).tolist()
        if self.check_value is not None:
            self.check_value(f)
        self._set_flat(x)
        return f, g, gtd, gmax

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr = float(group["lr"])
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        line_search_fn, history_size = group["line_search_fn"], group["history_size"]
        if line_search_fn not in (None, "strong_wolfe"):
            raise RuntimeError("only 'strong_wolfe' is supported")

        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)
        orig_loss = closure()
        flat_grad = self._gather_flat_grad()
        loss, g_max = torch.stack([orig_loss.detach().double(), flat_grad.abs().max().double()]).tolist()
        if self.check_value is not None:
            self.check_value(loss)
        current_evals = 1
        state["func_evals"] += 1
        if g_max <= tolerance_grad:
            state["converged"] = True
            return orig_loss

        d, t = state.get("d"), state.get("t")
        S, Y, rho = state.get("S"), state.get("Y"), state.get("rho")
        h_diag = state.get("H_diag")
        prev_flat_grad, prev_loss = state.get("prev_flat_grad"), state.get("prev_loss")
        n_iter = 0
        start = self._flat_params()  # to tell a call that moved nothing (see the end)
        restart = state.pop("restart", False)
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            first = state["n_iter"] == 1 or (restart and n_iter == 1)
            if first:
                d = flat_grad.neg()
                S = Y = rho = None
                h_diag = 1
            else:
                y = flat_grad.sub(prev_flat_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:  # the memory update, the oldest pair dropped past history_size
                    S, Y, rho = (_push(buf, v, history_size) for buf, v in ((S, s), (Y, y), (rho, 1.0 / ys)))
                    h_diag = ys / y.dot(y)
                d = flat_grad.neg() * h_diag if S is None else self._direction(flat_grad, S, Y, rho, h_diag)
            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            else:
                prev_flat_grad.copy_(flat_grad)
            prev_loss = loss

            if first:
                gtd, d_norm, g_sum = torch.stack([flat_grad.dot(d), d.abs().max(), flat_grad.abs().sum()]).double().tolist()
                t = min(1.0, 1.0 / g_sum) * lr
            else:
                gtd, d_norm = torch.stack([flat_grad.dot(d), d.abs().max()]).double().tolist()
                t = lr
            if gtd > -tolerance_change:
                break
            ls_func_evals = 0
            if line_search_fn is not None:
                x_init = self._flat_params()

                def obj_func(x, t, d):
                    return self._evaluate(closure, x, t, d)

                loss, flat_grad, t, ls_func_evals, g_max = _strong_wolfe(
                    obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals, d_norm=d_norm,
                    g_max=g_max)
                self._add_grad(t, d)
                opt_cond = g_max <= tolerance_grad
            else:
                self._add_grad(t, d)
                opt_cond = False
                if n_iter != max_iter:
                    with torch.enable_grad():
                        loss_t = closure()
                    flat_grad = self._gather_flat_grad()
                    loss, g_max = torch.stack([loss_t.detach().double(), flat_grad.abs().max().double()]).tolist()
                    if self.check_value is not None:
                        self.check_value(loss)
                    opt_cond = g_max <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if d_norm * abs(t) <= tolerance_change:  # max|t d| (the same number: rounding is monotone)
                break
            if abs(loss - prev_loss) < tolerance_change:
                break

        state.update({"d": d, "t": t, "S": S, "Y": Y, "rho": rho, "H_diag": h_diag, "prev_flat_grad": prev_flat_grad,
                      "prev_loss": prev_loss})
        # A call that moved no parameter leaves the state as it found it, so every later call would do the same
        # (torch's LBFGS stalls there for good: seen in hh_m polishes, the history's direction so nearly
        # orthogonal to the gradient that no step along it changes the float32 loss). The next call starts
        # afresh from steepest descent; if that moves nothing either, the polish has converged.
        if torch.equal(start, self._flat_params()):
            state["converged"] = restart or S is None
            state["restart"] = not state["converged"]
        return orig_loss

    @property
    def converged(self) -> bool:
        """True once a call from steepest descent moved no parameter (further calls would change nothing)."""
        return bool(self.state[self._params[0]].get("converged", False))
