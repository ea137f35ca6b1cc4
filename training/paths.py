"""The Trainer's training paths by name: ``Trainer(engine=NAME)`` (the configuration's ``training.engine``)
takes one from :data:`REGISTRY`, as :data:`inference.backends.REGISTRY` names the inference backends.

A path says whether the steps run on the hand-written engine (:mod:`~training.engine`) or on autograd,
whether that engine is required (an error naming the model or the loss it cannot take) or only preferred
(autograd where it cannot), and which compiled kernels it puts into an engine: the first-order steps'
(``polish`` false) or the L-BFGS polish objective's (``polish`` true; on a float64 copy of the model where
``lbfgs_dtype`` asks for one). Whatever the path, the Trainer's ``capture`` replays a fused step from a CUDA
graph (:mod:`~training.graph`) and ``lbfgs_iterations`` adds the polish (:mod:`~training.lbfgs`).
"""
from __future__ import annotations


class TrainingPath:
    """One way of computing the Trainer's steps. Subclasses set ``name`` (and ``fused``, ``required`` where
    they differ) and fill in :meth:`kernels`."""

    name = ""
    fused = True  # on the hand-written engine; False: autograd
    required = True  # the engine or an error; False: autograd where the engine cannot take the model or a loss

    def kernels(self, trainer, eng, polish: bool) -> None:
        """Put this path's compiled kernels into ``eng``; none: the engine runs on torch operators."""


class Auto(TrainingPath):
    """The engine where it takes the model and every loss, else autograd; its data and residual steps as
    compiled CPU calls where they apply and build (a float32 or float64 model on the CPU)."""

    name, required = "auto", False

    def kernels(self, trainer, eng, polish: bool) -> None:
        trainer._cpu_kernels(eng)


class TorchOperators(TrainingPath):
    """The engine on torch operators only."""

    name = "fused"


class CompiledCpuSteps(TrainingPath):
    """The engine with its data and residual steps as compiled CPU calls (:mod:`~training.cpu_step`); an
    error says why where they cannot be built."""

    name = "cpp"

    def kernels(self, trainer, eng, polish: bool) -> None:
        trainer._cpu_kernels(eng)


class TritonSteps(TrainingPath):
    """The engine with each mean-squared-error data step in one Triton kernel, and an ODE residual step too
    where the kernel writes the model's residual (:mod:`~training.triton_step`); the polish's objective on
    torch operators."""

    name = "triton"

    def kernels(self, trainer, eng, polish: bool) -> None:
        if polish:
            return
        from .triton_step import TritonDataStep, residual_steps

        eng.data_kernel = TritonDataStep(eng)
        eng.residual_kernel = residual_steps(eng)


class Autograd(TrainingPath):
    """The losses' own torch forms, differentiated by autograd."""

    name, fused, required = "autograd", False, False


REGISTRY: dict[str, TrainingPath] = {
    p.name: p for p in (Auto(), TorchOperators(), CompiledCpuSteps(), TritonSteps(), Autograd())
}
