"""run.py — run every end-to-end test (tests/e2e/test_*.py) against a tscaled binary.

    python3 tests/e2e/run.py build/tscaled
"""
import os
import sys
import unittest

here = os.path.dirname(os.path.abspath(__file__))
if len(sys.argv) > 1:
    os.environ["TSCALED"] = os.path.abspath(sys.argv[1])
sys.path.insert(0, here)
suite = unittest.defaultTestLoader.discover(here, pattern="test_*.py", top_level_dir=here)
result = unittest.TextTestRunner(verbosity=2).run(suite)
n = result.testsRun
failed = len(result.failures) + len(result.errors)
print(f"e2e: {n - failed - len(result.skipped)} passed, {failed} failed, {len(result.skipped)} skipped")
sys.exit(0 if result.wasSuccessful() and n > 0 else 1)
