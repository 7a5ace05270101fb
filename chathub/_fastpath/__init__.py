"""Compiled hot path (Cython). Import through :mod:`chathub.speedups`.

Each module here comes as ``_name.pyx`` (implementation), ``_name.pxd`` (the
C-level API for ``cimport``), ``_name.pyi`` (the Python-level API) and a
pure-Python twin ``_name_py.py`` that the tests compare it with.
"""
