import os

os.environ.setdefault("NMREF_FAST", "1")   # nbmake kernels inherit it: tiny data and epochs (DESIGN.md)
