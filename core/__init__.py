"""The bottom layer: errors, atomic I/O, provenance, machine information, configuration schema, the run
layout, locks and the precision vocabulary. It imports nothing else of the project and never torch.

Layering (checked by tests/test_architecture.py): ``core`` <- ``solvers`` <- ``surrogates`` <- ``training``
and ``inference`` (siblings) <- ``benchmarks`` <- ``workflow``; each imports only the rooms to its left.
"""
