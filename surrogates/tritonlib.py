"""Loading generated Triton source, for the project's kernels (training.triton_step; inference.kernels).

Triton reads a JIT function's source with ``inspect``, so a kernel generated as text per network is stored
as a file in Triton's cache folder and imported (:func:`core.io.import_generated`). ``@triton.jit`` reads
``TRITON_INTERPRET`` when it decorates, so each source is imported once per mode (interpreted on the CPU,
or compiled for a GPU) and kept. Triton is imported only when a kernel is built.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from core.errors import BackendUnavailableError, InvalidInputError
from core.io import import_generated

from .activations import TRITON_HELPERS

_MODULES: dict = {}

# Triton source shared by the generated modules (each decorates its own copy): float32 activations from exp,
# without overflow (surrogates.activations: the helpers of its Triton spellings)
EXACT_ACTIVATIONS = TRITON_HELPERS


def triton(what: str = "the Triton kernels"):
    """The triton package, or :class:`BackendUnavailableError` naming ``what`` needs it."""
    try:
        import triton as t
    except ImportError as exc:
        raise BackendUnavailableError(
            f"{what} need the triton package (pip install 'ephys-surrogates[test]', which pins triton 3.6.0), "
            f"and it cannot be imported: {exc}") from None
    return t


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``) right now."""
    return bool(triton().knobs.runtime.interpret)


def load_module(source: str, stem: str, interpreted: bool, before=None):
    """The module of generated ``source`` (file ``<stem>_<digest>.py``), its kernels decorated for the
    interpreter or for the GPU; ``before()`` runs inside the mode's scope first (e.g. interpreter patches)."""
    key = (source, interpreted)
    if key in _MODULES:
        return _MODULES[key]
    t = triton()
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    path = Path(t.knobs.cache.dir) / "ephys_surrogates" / f"{stem}_{digest}.py"
    with t.knobs.runtime.scope():  # @triton.jit reads the mode when it decorates
        t.knobs.runtime.interpret = interpreted
        if before is not None:
            before()
        module = import_generated(source, path, f"_triton_{stem}_{digest}_{'interpreted' if interpreted else 'compiled'}")
    _MODULES[key] = module
    return module


# ---------------------------------------------------------------- compiling ahead of time, without a GPU
def _ptxas_path() -> str:
    return triton().knobs.nvidia.ptxas.path


def ptxas_unavailable_reason() -> str | None:
    """Why kernels cannot be compiled ahead of time here (no triton, or its ptxas does not start), or None."""
    try:
        ptxas = _ptxas_path()
        subprocess.run([ptxas, "--version"], capture_output=True, check=True, timeout=60)
    except BackendUnavailableError as exc:
        return str(exc)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return f"the ptxas that ships with triton does not run here ({type(exc).__name__}: {exc})"
    return None


def ptxas_figures(ptx: str, ptxas: str | None = None) -> dict:
    """Run ``ptxas -v`` (Triton's own, by default) on ``ptx`` for the target its ``.target`` line names, and parse what it reports."""
    import tempfile

    ptxas = ptxas or _ptxas_path()
    target = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.M)
    if target is None:
        raise InvalidInputError("the PTX has no .target line")
    target = target.group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        try:
            res = subprocess.run([ptxas, "-v", f"-arch={target}", str(src), "-o", str(Path(tmp) / "kernel.cubin")],
                                 capture_output=True, text=True, timeout=300)
        except OSError as exc:
            raise BackendUnavailableError(f"cannot run ptxas ({ptxas}): {exc}") from None
    if res.returncode:
        raise RuntimeError(f"ptxas ({ptxas}) rejected the PTX (code {res.returncode}): {res.stderr.strip()[-2000:]}")
    log = res.stderr + res.stdout

    def number(pattern: str) -> int:
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    return {
        "target": target,
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "stack_frame": number(r"(\d+) bytes stack frame"),
        "static_shared_bytes": number(r"(\d+) bytes smem"),
        "ptxas_notes": sorted(set(re.findall(r"\((C\d+)\)", log))),
    }
