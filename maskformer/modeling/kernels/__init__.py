"""
Fast kernels of the model core. Each computes exactly one plain computation (stated in its module
docstring, and checked against it in tests/test_kernels.py) in less time or memory; the paper-level
code (criterion, predictor, inference) calls them where it can and keeps the plain computation
callable.
"""
