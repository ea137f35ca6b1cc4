"""ONNX export of a trained network (dynamic batch), written atomically."""
from __future__ import annotations

import copy
import io
from pathlib import Path

import torch

from core.io import write_bytes
from core.precision import precision

ONNX_PRECISIONS = ("fp32", "fp16")


def torch_dtype(name) -> torch.dtype:
    """The torch dtype of a precision name of :mod:`core.precision` (``fp32``, ``float32``, ``bf16``, ...)."""
    return getattr(torch, precision(name).torch)


def model_copy(model, prec: str = "fp32", device: str = "cpu"):
    """An evaluation-mode copy of ``model`` in precision ``prec`` on ``device`` (the original is untouched)."""
    return copy.deepcopy(model).eval().to(device=device, dtype=torch_dtype(prec))


def export_onnx(model, path, prec: str = "fp32") -> Path:
    """Export ``model`` to ONNX with a dynamic batch dimension (input ``x``, output ``y``).

    ``fp16`` exports a half-precision graph (weights and I/O in FP16), which is how strongly typed
    TensorRT builds (TensorRT 11) get FP16. Written to a temporary name and renamed.
    """
    prec = precision(prec, allowed=ONNX_PRECISIONS).name
    m = model_copy(model, prec, "cpu")
    x = torch.zeros(2, model.n_inputs, dtype=torch_dtype(prec))
    buf = io.BytesIO()
    torch.onnx.export(m, (x,), buf, input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17)
    return write_bytes(path, buf.getvalue())
