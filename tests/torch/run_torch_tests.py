#!/usr/bin/env python3
"""TorchScript adapter test driver (CTest label "torch").

Writes the scripted models and their PyTorch references with make_torch_models.py into
--workdir, then runs the C++ checker (age_torch_check, Catch2) on them. Exit code 77 (CTest
SKIP_RETURN_CODE) when torch is not installed.
"""

import argparse
import os
import subprocess
import sys

try:
    import torch  # noqa: F401  (only to know whether the references can be made)
except ImportError:
    print("skipped: python3-torch not installed")
    sys.exit(77)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checker", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("checker_args", nargs="*", help="passed to the checker (Catch2 test names or tags)")
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, os.path.join(here, "make_torch_models.py"), "--out", args.workdir], check=True)
    env = dict(os.environ, AGE_TORCH_TEST_DIR=args.workdir)
    return subprocess.run([args.checker] + args.checker_args, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
