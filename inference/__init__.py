"""The inference library: a trained network run by many backends, timed correctly.

* :mod:`inference.backends` - the registry of backends behind one ``Runner`` interface (torch, torch on
  CUDA, torch.compile, onnxruntime, TensorRT, the fused kernels), each checked against eager torch;
* :mod:`inference.export` - ONNX export;
* :mod:`inference.kernels` - our own kernels (the Triton tensor-core MLP and rollout);
* :mod:`inference.timing` - timing primitives (CUDA events on GPU, adaptive repeats);
* :mod:`inference.workloads` - the speed workloads: the same N x K outputs for solver and surrogate.

GPU libraries (CuPy, TensorRT, Triton on a GPU) are imported only inside the backends that use them.
The programs and reports that use this library live in :mod:`benchmarks`.
"""
