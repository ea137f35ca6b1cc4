"""Fully connected networks that take and return physical units, and their checkpoints."""
from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from core.errors import InvalidInputError
from core.io import sha256_arrays, write_bytes
from core.provenance import check_provenance

from .activations import TABLE

# the torch modules of the activation table (surrogates.activations), with their default arguments
ACTIVATIONS: dict[str, type[nn.Module]] = {a.name: getattr(nn, a.torch) for a in TABLE.values()}
CHECKPOINT_FORMAT = 1


def activation(name: str) -> nn.Module:
    """A fresh activation module by name; an unknown name lists the valid ones."""
    try:
        return ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise InvalidInputError(f"unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}") from None


def _check_hidden(hidden) -> list[tuple[str, int]]:
    out = []
    if not isinstance(hidden, (list, tuple)) or not hidden:
        raise InvalidInputError(f"hidden config must be a non-empty list of (activation, width) pairs, got {hidden!r}")
    for i, layer in enumerate(hidden):
        if not isinstance(layer, (list, tuple)) or len(layer) != 2:
            raise InvalidInputError(f"hidden layer {i} must be an (activation, width) pair, got {layer!r}")
        act, width = layer
        activation(act)
        if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
            raise InvalidInputError(f"hidden layer {i}: width must be a positive integer, got {width!r}")
        out.append((str(act), int(width)))
    return out


class MLP(nn.Module):
    """Fully connected network built from ``hidden = [(activation, width), ...]``.

    Inputs are mapped from ``input_range`` (lo, hi per input) to [-1, 1] and outputs from [-1, 1]-ish to
    ``output_center +- output_scale``, inside the model: it takes and returns physical units. The
    scaling lives in buffers, so it is saved with the weights and exported with the graph.
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        hidden: Sequence[tuple[str, int]],
        output_activation: str | None = None,
        input_range=None,
        output_center=None,
        output_scale=None,
    ):
        super().__init__()
        for name, v in (("n_inputs", n_inputs), ("n_outputs", n_outputs)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {v!r}")
        self.hidden = _check_hidden(hidden)
        self.n_inputs, self.n_outputs = int(n_inputs), int(n_outputs)
        self.output_activation = output_activation
        layers: list[nn.Module] = []
        width = self.n_inputs
        for act, w in self.hidden:
            layers += [nn.Linear(width, w), activation(act)]
            width = w
        layers.append(nn.Linear(width, self.n_outputs))
        if output_activation is not None:
            layers.append(activation(output_activation))
        self.net = nn.Sequential(*layers)
        lo, hi = (np.full(n_inputs, -1.0), np.full(n_inputs, 1.0)) if input_range is None else map(np.asarray, input_range)
        if lo.shape != (n_inputs,) or hi.shape != (n_inputs,) or not np.all(hi > lo):
            raise InvalidInputError(f"input_range must be (lo, hi) with {n_inputs} values each and hi > lo")
        center = np.zeros(n_outputs) if output_center is None else np.asarray(output_center, dtype=float)
        scale = np.ones(n_outputs) if output_scale is None else np.asarray(output_scale, dtype=float)
        if center.shape != (n_outputs,) or scale.shape != (n_outputs,) or not np.all(scale > 0):
            raise InvalidInputError(f"output_center/output_scale must have {n_outputs} values, scale > 0")
        self.register_buffer("in_center", torch.tensor((lo + hi) / 2, dtype=torch.float32))
        self.register_buffer("in_halfwidth", torch.tensor((hi - lo) / 2, dtype=torch.float32))
        self.register_buffer("out_center", torch.tensor(center, dtype=torch.float32))
        self.register_buffer("out_scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net((x - self.in_center) / self.in_halfwidth)
        return self.out_center + self.out_scale * z

    def config(self) -> dict:
        """Everything needed to rebuild this network (without weights)."""
        return {
            "n_inputs": self.n_inputs,
            "n_outputs": self.n_outputs,
            "hidden": [list(h) for h in self.hidden],
            "output_activation": self.output_activation,
        }

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def linear_layers(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]


def torch_save(obj, path) -> None:
    """``torch.save`` into memory, then written atomically: a full disk gives a clear ``WriteError`` naming
    the file, never a half-written checkpoint."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getbuffer())


def state_copy(model: nn.Module) -> dict:
    """A real copy of the weights (not references to tensors that training keeps changing)."""
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}


def weights_sha256(state_dict: Mapping) -> str:
    """The checksum of a network's weights (:func:`core.io.sha256_arrays` of its tensors), recorded in every
    checkpoint and checked by :func:`load_checkpoint`: weights changed in place are refused."""
    return sha256_arrays({k: v.detach().cpu().numpy() for k, v in state_dict.items()})


def save_checkpoint(model: MLP, path, state: dict | None = None, meta: dict | None = None) -> None:
    """Save a network with its architecture (and the checksum of its weights), so :func:`load_checkpoint`
    needs nothing else."""
    state = copy.deepcopy(state) if state is not None else state_copy(model)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InvalidInputError(f"refusing to write {path}: weights {bad[0]!r} hold NaN or infinite values")
    torch_save({
        "format": CHECKPOINT_FORMAT,
        "config": model.config(),
        "state_dict": state,
        "weights_sha256": weights_sha256(state),
        "meta": meta or {},
    }, path)


def load_checkpoint(path, map_location="cpu", expect: Mapping | None = None) -> tuple[MLP, dict]:
    """Rebuild a network from a checkpoint written by :func:`save_checkpoint`; returns (model, meta).

    ``expect`` maps provenance keys (``problem``, ``problem_fingerprint``, ``surrogate``, ``n``, ``seed``,
    ``arch``, ...) to what the caller needs; a checkpoint made for something else raises
    :class:`~core.errors.ProvenanceError` naming the file and the key.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise InvalidInputError(f"checkpoint {path} does not exist") from None
    except Exception as exc:
        raise InvalidInputError(f"checkpoint {path} is damaged or not a checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "config" not in ckpt:
        raise InvalidInputError(f"{path} is not a checkpoint of this project (format {CHECKPOINT_FORMAT})")
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidInputError(f"checkpoint {path} is damaged (no weights)")
    if "weights_sha256" not in ckpt:
        raise InvalidInputError(
            f"checkpoint {path} records no weights_sha256, so its weights cannot be checked: written by other code, "
            "or by an older version (then `python -m surrogates.adopt RESULTS_DIR` adds it); else train it again")
    if ckpt["weights_sha256"] != weights_sha256(state):
        raise InvalidInputError(
            f"checkpoint {path}: its weights were changed after it was written (they no longer match its "
            "weights_sha256); delete it and train it again")
    meta = ckpt.get("meta", {})
    if expect:
        check_provenance(meta.get("provenance", {}), expect, f"checkpoint {path}")
    model = MLP(**ckpt["config"])
    load_weights(model, ckpt["state_dict"], str(path))
    return model, meta


def load_weights(model: nn.Module, state_dict: dict, source: str = "state dict") -> None:
    """Load weights, turning an architecture mismatch into a clear error."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InvalidInputError(
            f"{source} holds weights of another architecture than {getattr(model, 'hidden', type(model).__name__)}: "
            f"{' '.join(first[:3])}"
        ) from None
