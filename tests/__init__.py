"""
The test suite, a package so that pytest puts the repository root on sys.path and test modules
import their shared helpers as ``tests.utils.<topic>`` however pytest is started.
"""
