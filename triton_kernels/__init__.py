"""Triton kernels for flashnce (installed as ``flashnce.triton_kernels``).

Importing this package never requires Triton; the kernels import it lazily.
"""
