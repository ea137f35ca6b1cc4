"""L-BFGS with the two-loop recursion as a handful of matrix operations, for small networks on a GPU.

``torch.optim.LBFGS`` runs the two-loop recursion as ``2 * history`` dot products and vector updates, each
step size read back to the host (``add_(..., alpha=tensor)``): with the polish's history of 50, ~650 operators
and ~109 host reads an iteration (counted on the CPU), 5.6-6.7 ms an iteration on an H100 for hh_m's small
networks (``make gpu-check``'s lbfgs step, benchmarks/README.md), so hh_m's polishes were most of the grid's
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
"""
from __future__ import annotations

import torch
from torch.optim.lbfgs import _strong_wolfe


def _push(rows, v, keep: int):
    """``rows`` (or nothing) with ``v`` appended as the newest row, the oldest dropped past ``keep`` rows."""
    v = v[None]
    return v if rows is None else torch.cat([rows[max(0, len(rows) + 1 - keep):], v])


class LBFGS(torch.optim.LBFGS):
    """Drop-in for :class:`torch.optim.LBFGS` (real, dense parameters; ``line_search_fn`` None or
    ``"strong_wolfe"``)."""

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        if any(torch.is_complex(p) for p in self._params):
            raise ValueError("surrogates.lbfgs.LBFGS takes real parameters only")

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
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1
        flat_grad = self._gather_flat_grad()
        if flat_grad.abs().max() <= tolerance_grad:
            state["converged"] = True
            return orig_loss

        d, t = state.get("d"), state.get("t")
        S, Y, rho = state.get("S"), state.get("Y"), state.get("rho")
        h_diag = state.get("H_diag")
        prev_flat_grad, prev_loss = state.get("prev_flat_grad"), state.get("prev_loss")
        n_iter = 0
        start = self._clone_param()  # to tell a call that moved nothing (see the end)
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

            t = min(1.0, 1.0 / float(flat_grad.abs().sum())) * lr if first else lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break
            ls_func_evals = 0
            if line_search_fn is not None:
                x_init = self._clone_param()

                def obj_func(x, t, d):
                    return self._directional_evaluate(closure, x, t, d)

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(obj_func, x_init, t, d, loss, flat_grad, gtd,
                                                                  max_ls=max_eval - current_evals)
                self._add_grad(t, d)
                opt_cond = flat_grad.abs().max() <= tolerance_grad
            else:
                self._add_grad(t, d)
                opt_cond = False
                if n_iter != max_iter:
                    with torch.enable_grad():
                        loss = float(closure())
                    flat_grad = self._gather_flat_grad()
                    opt_cond = flat_grad.abs().max() <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if d.mul(t).abs().max() <= tolerance_change:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break

        state.update({"d": d, "t": t, "S": S, "Y": Y, "rho": rho, "H_diag": h_diag, "prev_flat_grad": prev_flat_grad,
                      "prev_loss": prev_loss})
        # A call that moved no parameter leaves the state as it found it, so every later call would do the same
        # (torch's LBFGS stalls there for good: seen in hh_m polishes, the history's direction so nearly
        # orthogonal to the gradient that no step along it changes the float32 loss). The next call starts
        # afresh from steepest descent; if that moves nothing either, the polish has converged.
        if all(torch.equal(a, p) for a, p in zip(start, self._params)):
            state["converged"] = restart or S is None
            state["restart"] = not state["converged"]
        return orig_loss

    @property
    def converged(self) -> bool:
        """True once a call from steepest descent moved no parameter (further calls would change nothing)."""
        return bool(self.state[self._params[0]].get("converged", False))
