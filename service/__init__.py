"""RankIQ serving package: imaging I/O, the preprocessing contract and ONNX Runtime scoring.

Never imports torch: everything here runs on NumPy, SciPy and ONNX Runtime.
"""

__version__ = "0.1.0"
