"""Benchmark programs (not tests): they warm up, repeat, report median and spread, and write the
machine and library versions beside every figure. Nothing here needs a GPU to import."""
from .machine import machine_info

__all__ = ["machine_info"]
