"""Neural-network surrogates (data-driven, physics-informed and iterative MLPs) and their training.

Filled in by the surrogate-library issue; importing it needs no GPU.
"""
