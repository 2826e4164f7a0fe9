"""Triton kernels for the fastrnn recurrences (one module per cell).

``import fastrnn.triton`` never fails: Triton itself is only imported when a kernel
runs, and ``TritonBackend().available()`` reports why it cannot.
"""
from .backend import TritonBackend

__all__ = ["TritonBackend"]
