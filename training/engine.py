"""A training engine for :class:`~surrogates.network.MLP`: forward, backward and directional derivatives
written out by hand, with every buffer allocated once.

Why: a small MLP's training step is a few tens of MFLOP. Through autograd it is bound by per-operation
overhead, fresh allocations (each 256 kB temporary is a new ``mmap`` and its page faults on Linux) and, for
physics-informed losses, by the second backward pass that ``create_graph`` differentiation builds. Here
each layer is one ``addmm`` forward and two matrix products backward into preallocated buffers, the
activation derivatives are closed forms, and a physics residual's time derivative is propagated forward
(a directional derivative, "forward mode") beside the values, then both are propagated back together:
a collocation row costs 2.1-2.6 times a data row on a CPU (its matrix products alone are 1.98 times), not
~3.5 times; the residual's own gradient comes in closed form from the model (:meth:`tangent_step_closed`).

The engine works in the network's scaled coordinates: inputs ``(x - in_center) / in_halfwidth`` and outputs
``z`` with ``y = out_center + out_scale * z``, which is exactly how :class:`~surrogates.losses.DataLoss`
weighs outputs (errors divided by the output scale), so losses and gradients are those of the autograd
path (the tests check it to 1e-5). Gradients are written into (or added to) each parameter's ``.grad``,
so any torch optimiser (fused Adam here) and the Trainer's checkpoints work unchanged. Everything is plain
torch on the model's device: on a GPU the same step can be captured in a CUDA graph.
"""
from __future__ import annotations

import math

import torch

from core.errors import InvalidInputError

from surrogates.activations import LEAKY_SLOPE

SQRT_2PI = math.sqrt(2.0 * math.pi)


# ---------------------------------------------------------------- activations: value, first and second derivative
def _sig(z, out):
    return torch.sigmoid(z, out=out)


class _Act:
    """An activation's value ``f(z)``, and derivative terms, computed into given buffers."""

    name = ""

    def f(self, z, out):
        raise NotImplementedError

    def df(self, z, a, out):
        """f'(z) (``a`` is f(z), already computed)."""
        raise NotImplementedError

    def d2f(self, z, a, out):
        """f''(z)."""
        raise NotImplementedError

    def backward(self, g, z, a, out):
        """g * f'(z) (the data path's backward; fused kernels where torch has them)."""
        self.df(z, a, out)
        return out.mul_(g)

    def tangent(self, z, zt, a, d1, at, q, tmp) -> float:
        """The forward-mode layer: ``a = f(z)``, ``d1 = f'(z)``, ``at = f'(z) zt`` and ``q`` with
        ``f''(z) zt = c q`` for the returned constant ``c`` (the backward pass needs ``d1`` and ``c q``:
        ``gz = g f' + c gt q``). ``tmp`` is scratch. Subclasses fold the constant and share work between
        the value and its derivatives (one sigmoid for SiLU's value and both derivatives)."""
        self.f(z, a)
        self.df(z, a, d1)
        torch.mul(d1, zt, out=at)
        self.d2f(z, a, q)
        q.mul_(zt)
        return 1.0


class _Sigmoid(_Act):
    name = "Sigmoid"

    def f(self, z, out):
        return _sig(z, out)

    def df(self, z, a, out):
        return torch.mul(a, 1.0 - a, out=out)

    def d2f(self, z, a, out):
        self.df(z, a, out)
        return out.mul_(1.0 - 2.0 * a)

    def backward(self, g, z, a, out):
        return torch.ops.aten.sigmoid_backward.grad_input(g, a, grad_input=out)

    def tangent(self, z, zt, a, d1, at, q, tmp) -> float:  # f' = a - a^2, f'' zt = f' zt (1 - 2a) = at - 2 a at
        torch.sigmoid(z, out=a)
        torch.addcmul(a, a, a, value=-1.0, out=d1)
        torch.mul(d1, zt, out=at)
        torch.addcmul(at, a, at, value=-2.0, out=q)
        return 1.0


class _Tanh(_Act):
    name = "Tanh"

    def f(self, z, out):
        # 2 sigmoid(2z) - 1: the same function, but torch's vectorised sigmoid is ~3x faster than its tanh on CPUs
        torch.mul(z, 2.0, out=out)
        torch.sigmoid(out, out=out)
        return out.mul_(2.0).sub_(1.0)

    def df(self, z, a, out):
        torch.mul(a, a, out=out)
        return out.neg_().add_(1.0)

    def d2f(self, z, a, out):
        self.df(z, a, out)
        return out.mul_(a).mul_(-2.0)

    def backward(self, g, z, a, out):
        return torch.ops.aten.tanh_backward.grad_input(g, a, grad_input=out)

    def tangent(self, z, zt, a, d1, at, q, tmp) -> float:  # f' = 1 - a^2, f'' zt = -2 a f' zt = -2 (a at)
        self.f(z, a)
        d1.fill_(1.0).addcmul_(a, a, value=-1.0)
        torch.mul(d1, zt, out=at)
        torch.mul(a, at, out=q)
        return -2.0


class _SiLU(_Act):
    name = "SiLU"

    def f(self, z, out):
        return torch.ops.aten.silu.out(z, out=out)

    def df(self, z, a, out):
        s = torch.sigmoid(z)
        torch.mul(z, 1.0 - s, out=out)
        return out.add_(1.0).mul_(s)

    def d2f(self, z, a, out):
        s = torch.sigmoid(z)
        torch.mul(z, 1.0 - 2.0 * s, out=out)
        return out.add_(2.0).mul_(s * (1.0 - s))

    def backward(self, g, z, a, out):
        return torch.ops.aten.silu_backward.grad_input(g, z, grad_input=out)

    def tangent(self, z, zt, a, d1, at, q, tmp) -> float:  # one sigmoid for the value and both derivatives:
        s = torch.sigmoid(z, out=tmp)                   # s = sigmoid(z); a = z s
        torch.mul(z, s, out=a)
        torch.sub(z, a, out=d1).add_(1.0).mul_(s)       # f'  = s (1 + z (1 - s)) = s (1 + z - a)
        torch.mul(d1, zt, out=at)
        torch.add(z, a, alpha=-2.0, out=q).add_(2.0)    # f'' = s (1 - s)(2 + z - 2a)
        q.mul_(zt).mul_(s.addcmul_(s, s, value=-1.0))   # s - s^2, in place (elementwise: no aliasing hazard)
        return 1.0


class _ReLU(_Act):
    name = "ReLU"
    slope = 0.0

    def f(self, z, out):
        if self.slope == 0.0:
            return torch.clamp(z, min=0.0, out=out)
        return torch.where(z > 0, z, z * self.slope, out=out)

    def df(self, z, a, out):
        out.copy_(z > 0)
        return out.mul_(1.0 - self.slope).add_(self.slope) if self.slope else out

    def d2f(self, z, a, out):
        return out.zero_()


class _LeakyReLU(_ReLU):
    name = "LeakyReLU"
    slope = LEAKY_SLOPE


class _ELU(_Act):
    name = "ELU"

    def f(self, z, out):
        return torch.where(z > 0, z, torch.expm1(z), out=out)

    def df(self, z, a, out):  # 1 for z > 0, exp(z) = a + 1 below
        return torch.clamp(a, max=0.0, out=out).add_(1.0)

    def d2f(self, z, a, out):  # 0 for z > 0, exp(z) below
        return torch.clamp(a, max=0.0, out=out).add_(1.0).mul_(z <= 0)


class _GELU(_Act):
    name = "GELU"  # the exact (erf) form, as nn.GELU()

    def f(self, z, out):
        return torch.ops.aten.gelu.out(z, out=out)

    def df(self, z, a, out):
        phi = torch.exp(-0.5 * z * z).mul_(1.0 / SQRT_2PI)
        cdf = torch.erf(z * (1.0 / math.sqrt(2.0))).add_(1.0).mul_(0.5)
        return torch.addcmul(cdf, z, phi, out=out)

    def d2f(self, z, a, out):
        phi = torch.exp(-0.5 * z * z).mul_(1.0 / SQRT_2PI)
        torch.mul(z, z, out=out)
        return out.neg_().add_(2.0).mul_(phi)


class _Softplus(_Act):
    name = "Softplus"  # beta 1, threshold 20, as nn.Softplus()

    def f(self, z, out):
        return torch.ops.aten.softplus.out(z, 1.0, 20.0, out=out)

    def df(self, z, a, out):
        return torch.where(z > 20.0, torch.ones_like(z), torch.sigmoid(z), out=out)

    def d2f(self, z, a, out):
        s = torch.sigmoid(z)
        return torch.mul(s, 1.0 - s, out=out).mul_(z <= 20.0)


ACTIVATIONS = {a.name: a for a in (_Sigmoid(), _Tanh(), _SiLU(), _ReLU(), _LeakyReLU(), _ELU(), _GELU(), _Softplus())}


class _Identity(_Act):
    name = "identity"


# ---------------------------------------------------------------- matrix products, the faster way round
class _Products:
    """``C = A @ B`` (or ``C += A @ B``, or ``bias + A @ B``) into a given buffer, computed directly or as
    ``(B^T A^T)^T``.

    For the thin shapes of a small MLP the CPU BLAS is several times faster one way round than the other:
    a tall, narrow result (the 64 x 4 weight gradient of a 4-input layer, the 1024 x 2 output of a 2-output
    layer) is computed much faster as its wide transpose (measured: 27 against 107-126 us for 64 x 4 on the
    2-vCPU VM). The rule is fixed, not timed, so that every run makes the same choice and gives the same bits
    (a resumed run equals an uninterrupted one; a run on a cluster equals one on a workstation). On a GPU the
    direct form is used (cuBLAS picks its own kernels).
    """

    NARROW = 16

    def __init__(self, device):
        self.cpu = device.type == "cpu"
        self.scratch: dict = {}

    def __call__(self, key, A, B, out, add=False, bias=None):
        if not (self.cpu and out.shape[1] < self.NARROW < out.shape[0]):
            if bias is not None:
                return torch.addmm(bias, A, B, out=out)
            return out.addmm_(A, B) if add else torch.mm(A, B, out=out)
        tmp = self.scratch.get(key)
        if tmp is None or tmp.shape != (out.shape[1], out.shape[0]):
            tmp = self.scratch[key] = torch.empty(out.shape[1], out.shape[0], device=out.device, dtype=out.dtype)
        if bias is not None:
            torch.addmm(bias[:, None], B.t(), A.t(), out=tmp)
        else:
            torch.mm(B.t(), A.t(), out=tmp)
        return out.add_(tmp.t()) if add else out.copy_(tmp.t())


# ---------------------------------------------------------------- the data loss and its gradient
def power_loss(diff: torch.Tensor, weight: float, p: float, per_network: bool = False):
    """``mean(|diff|^p)`` and its gradient times ``weight``, written over ``diff`` (which it consumes).
    ``per_network``: ``diff`` is ``(networks, rows, outputs)`` and each network has its own mean."""
    dims = (1, 2) if per_network else None
    n = diff[0].numel() if per_network else diff.numel()
    if p == 2.0:
        loss = (diff * diff).mean(dim=dims) if per_network else torch.mean(diff * diff)
        return loss, diff.mul_(2.0 * weight / n)
    mag = diff.abs()  # d/dd |d|^p = p |d|^(p-2) d
    loss = mag.pow(p).mean(dim=dims) if per_network else torch.mean(mag.pow(p))
    return loss, diff.mul_(mag.pow_(p - 2.0)).mul_(p * weight / n)


# ---------------------------------------------------------------- the engine
class MLPEngine:
    """Hand-written forward/backward of an :class:`~surrogates.network.MLP` for batches of at most ``rows``.

    ``data_step(xs, ys, weight)`` adds ``weight * mean((z(xs) - ys)^2)`` to the objective and its gradient to
    each parameter's ``.grad``; ``tangent_step(xs, v, residual, weight)`` does the same for a residual of the
    outputs and their directional derivative along ``v``. Call ``zero_grad()`` once per step first.
    ``xs``, ``v`` are in scaled input coordinates and ``ys`` in scaled output coordinates (see :meth:`scale_x`,
    :meth:`scale_y`).
    """

    def __init__(self, model, rows: int):
        from surrogates.network import MLP

        if not isinstance(model, MLP):
            raise InvalidInputError(f"the MLP engine trains surrogates.network.MLP networks, not {type(model).__name__}")
        self.model = model
        self.linears = model.linear_layers()
        acts = [a for a, _ in model.hidden] + [model.output_activation]
        for a in acts:
            if a is not None and a not in ACTIVATIONS:
                raise InvalidInputError(f"the MLP engine has no activation {a!r}; valid: {sorted(ACTIVATIONS)}")
        self.acts = [ACTIVATIONS[a] if a else None for a in acts]
        self.rows = int(rows)
        # the parameters' storage, without autograd (the optimiser updates it in place)
        self.W = [lin.weight.detach() for lin in self.linears]
        self.b = [lin.bias.detach() for lin in self.linears]
        p = next(model.parameters())
        dev, dt = p.device, p.dtype
        for lin in self.linears:
            for t in (lin.weight, lin.bias):
                if t.grad is None:
                    t.grad = torch.zeros_like(t)
        widths = [lin.out_features for lin in self.linears]

        def buf(w):
            return torch.empty(self.rows, w, device=dev, dtype=dt)

        # forward values (z: pre-activation, a: post-activation) and tangents, per layer
        self.z = [buf(w) for w in widths]
        self.a = [buf(w) for w in widths]
        self.zt = [buf(w) for w in widths]
        self.at = [buf(w) for w in widths]
        # backward scratch: cotangents of a layer's output (primal, tangent) and derivative terms (d1 = f',
        # d2 = f'' zt up to the constant in _c)
        self.g = [buf(w) for w in widths]
        self.gt = [buf(w) for w in widths]
        self.d1 = [buf(w) for w in widths]
        self.d2 = [buf(w) for w in widths]
        self.tmp = [buf(w) for w in widths]
        self.ga = [buf(lin.in_features) for lin in self.linears]
        self.gat = [buf(lin.in_features) for lin in self.linears]
        self._c = [1.0] * len(widths)  # per layer: f''(z) zt = c * d2 (see _Act.tangent)
        self._written = False
        self.mm = _Products(dev)
        self._views: dict = {}
        # a kernel that does a whole mean-squared-error data step (training.triton_step, training.cpu_step),
        # and one for a residual step with a closed-form gradient (training.cpu_step), or None
        self.data_kernel = None
        self.tangent_kernel = None
        # and a maker of whole ODE residual steps in one call: problem -> step(x, v, weight) -> loss, or None
        # where it does not write that problem's residual (training.cpu_step.residual_steps, triton_step's)
        self.residual_kernel = None

    def _v(self, n: int) -> dict:
        """The buffers cut to ``n`` rows (views made once per size: slicing costs microseconds a call)."""
        v = self._views.get(n)
        if v is None:
            names = ("z", "a", "zt", "at", "g", "gt", "d1", "d2", "tmp", "ga", "gat")
            v = self._views[n] = {k: [t[:n] for t in getattr(self, k)] for k in names}
        return v

    # ------------------------------------------------------------ scaling
    def scale_x(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs in the network's coordinates, in the network's precision (float32 data, a float64 copy)."""
        return (x.to(self.W[0].dtype) - self.model.in_center) / self.model.in_halfwidth

    def scale_y(self, y: torch.Tensor) -> torch.Tensor:
        return (y.to(self.W[0].dtype) - self.model.out_center) / self.model.out_scale

    def zero_grad(self) -> None:
        """The next step's first gradient overwrites instead of adding."""
        self._written = False

    # ------------------------------------------------------------ weight gradients, accumulated or not
    def _wgrad(self, i, g, a, gt, at, add):
        """dW (+)= g^T a (+ gt^T at), db (+)= sum of g over rows."""
        lin = self.linears[i]
        gw, gb = lin.weight.grad, lin.bias.grad
        self.mm(("dW", i), g.t(), a, gw, add=add)
        if gt is not None:
            if at.dim() == 1:  # one direction for every row: gt^T 1 v^T is an outer product
                gw.addr_(gt.sum(0), at)
            else:
                self.mm(("dWt", i), gt.t(), at, gw, add=True)
        if add:
            gb.add_(g.sum(0))
        else:
            torch.sum(g, 0, out=gb)

    # ------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, xs: torch.Tensor, vs: torch.Tensor | None = None):
        """Scaled outputs ``z`` (n, outputs) of scaled inputs ``xs`` and, with a tangent ``vs`` (rows of input
        directions, or one direction for all rows), the directional derivative of ``z`` along it."""
        n = xs.shape[0]
        if n > self.rows:
            raise InvalidInputError(f"the engine was sized for {self.rows} rows, got {n}")
        V = self._v(n)
        a_prev, at_prev = xs, vs
        for i, act in enumerate(self.acts):
            z, a, W = V["z"][i], V["a"][i], self.W[i]
            self.mm(("fwd", i), a_prev, W.t(), z, bias=self.b[i])
            if at_prev is not None:
                zt = V["zt"][i]
                if at_prev.dim() == 1:  # the same direction for every row: one matrix-vector product
                    zt.copy_(torch.mv(W, at_prev).expand(n, -1))
                else:
                    self.mm(("fwdt", i), at_prev, W.t(), zt)
            if act is None:
                a = z
                at = V["zt"][i] if at_prev is not None else None
            elif at_prev is None:
                act.f(z, a)
                at = None
            else:  # f' and f'' zt now, kept for the backward pass
                at = V["at"][i]
                self._c[i] = act.tangent(z, V["zt"][i], a, V["d1"][i], at, V["d2"][i], V["tmp"][i])
            a_prev, at_prev = a, at
        return a_prev, at_prev

    # ------------------------------------------------------------ backward
    @torch.no_grad()
    def _backward(self, xs, vs, gz, gzt=None):
        """Propagate output cotangents ``gz`` (and ``gzt`` of the tangent) back, accumulating weight gradients."""
        V = self._v(xs.shape[0])
        g, gt = gz, gzt
        for i in range(len(self.linears) - 1, -1, -1):
            act = self.acts[i]
            z = V["z"][i]
            if act is not None:  # through a = f(z) (and at = f'(z) zt)
                a = V["a"][i]
                if gt is None:
                    g = act.backward(g, z, a, V["g"][i])
                else:  # f' and f'' zt = c q were kept by the forward pass: gz = g f' + gt f'' zt
                    d1 = V["d1"][i]
                    gz_i = torch.mul(g, d1, out=V["g"][i])
                    gz_i.addcmul_(gt, V["d2"][i], value=self._c[i])
                    gt = torch.mul(gt, d1, out=V["gt"][i])
                    g = gz_i
            a_in = xs if i == 0 else V["a"][i - 1]
            at_in = None
            if gt is not None:
                at_in = vs if i == 0 else V["at"][i - 1]
            self._wgrad(i, g, a_in, gt, at_in, self._written)
            if i > 0:
                g = self.mm(("dX", i), g, self.W[i], V["ga"][i])
                if gt is not None:
                    gt = self.mm(("dXt", i), gt, self.W[i], V["gat"][i])
        self._written = True

    # ------------------------------------------------------------ the objectives
    def data_step(self, xs: torch.Tensor, ys: torch.Tensor, weight: float = 1.0, p: float = 2.0) -> torch.Tensor:
        """``weight * mean(|z(xs) - ys|^p)`` (``p = 2``: the mean squared error); its gradient is added to the
        parameters' ``.grad``. Returns the unweighted loss (a 0-d tensor on the device, never synchronised)."""
        k = self.data_kernel
        if k is not None and p == 2.0 and xs.shape[0] <= k.rows:
            return k(xs, ys, weight, p)
        z, _ = self.forward(xs)
        with torch.no_grad():
            loss, g = power_loss(torch.sub(z, ys, out=self._v(z.shape[0])["gt"][-1]), weight, p)
        self._backward(xs, None, g)
        return loss

    def tangent_step(self, xs: torch.Tensor, vs: torch.Tensor, residual, weight: float = 1.0) -> torch.Tensor:
        """``weight * residual(z, zt, xs)``, where ``zt`` is the directional derivative of the scaled outputs along
        ``vs`` (one direction, or one per row) and ``residual`` returns a scalar tensor from torch operations
        on them (differentiated by autograd, which is cheap: it sees only the small output tensors)."""
        z, zt = self.forward(xs, vs)
        z_, zt_ = z.detach().requires_grad_(True), zt.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = residual(z_, zt_, xs)
            gz, gzt = torch.autograd.grad(loss * weight, (z_, zt_), allow_unused=True)
        if gz is None:
            gz = torch.zeros_like(z)
        if gzt is None:
            gzt = torch.zeros_like(zt)
        self._backward(xs, vs, gz.contiguous(), gzt.contiguous())
        return loss.detach()

    def tangent_step_closed(self, xs: torch.Tensor, vs: torch.Tensor, residual_grad, weight: float = 1.0) -> torch.Tensor:
        """As :meth:`tangent_step`, for a residual that gives its own gradients: ``residual_grad(z, zt) -> (loss,
        dloss/dz, dloss/dzt)`` in closed form. Autograd over the output tensors costs tens of small operations
        and their bookkeeping a step (a third of a collocation row's cost on a CPU); this costs a handful."""
        k = self.tangent_kernel
        if k is not None and xs.shape[0] <= k.rows:
            return k(xs, vs, residual_grad, weight)
        z, zt = self.forward(xs, vs)
        with torch.no_grad():
            loss, gz, gzt = residual_grad(z, zt)
            self._backward(xs, vs, gz.mul_(weight).contiguous(), gzt.mul_(weight).contiguous())
        return loss


# ---------------------------------------------------------------- a lean fused Adam
class FusedAdam:
    """Adam / AdamW as one fused kernel call per step over all parameters, without ``torch.optim``'s
    per-step bookkeeping (about 0.2 ms a step on a CPU, as much as the arithmetic of a small network).

    Same update as ``torch.optim.Adam(fused=True)`` (it calls the same kernel). The learning rate is given
    to each ``step``; :meth:`state_dict` and :meth:`load_state_dict` make a resumed run exact.
    """

    def __init__(self, params, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled: bool = False):
        self.params = [p for p in params]
        self.grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        for p, g in zip(self.params, self.grads):
            p.grad = g
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        # one step counter, listed once per parameter (the kernel only reads it): one increment per step
        self.step_count = torch.zeros((), dtype=torch.float32, device=self.params[0].device)
        self.steps = [self.step_count] * len(self.params)
        self.betas, self.eps, self.weight_decay = betas, float(eps), float(weight_decay)
        self._fn = torch._fused_adamw_ if decoupled else torch._fused_adam_

    @torch.no_grad()
    def step(self, lr) -> None:
        """One update at learning rate ``lr`` (a float, or a 0-d tensor on the parameters' device)."""
        data = [p.detach() for p in self.params]
        self.step_count.add_(1.0)  # the kernel reads the step count, it does not advance it
        self._fn(data, self.grads, self.m, self.v, [], self.steps, lr=lr, beta1=self.betas[0], beta2=self.betas[1],
                 weight_decay=self.weight_decay, eps=self.eps, amsgrad=False, maximize=False)

    def state_tensors(self) -> list:
        """Every tensor of the optimiser's state (the moments and the step count)."""
        return [*self.m, *self.v, self.step_count]

    def state_dict(self) -> dict:
        return {"m": [t.clone() for t in self.m], "v": [t.clone() for t in self.v], "step": self.step_count.clone()}

    def load_state_dict(self, state: dict) -> None:
        for dst, key in ((self.m, "m"), (self.v, "v")):
            for d, s in zip(dst, state[key]):
                d.copy_(s)
        self.step_count.copy_(state["step"])
