"""python -m benchmarks.coverage: see benchmarks/coverage/run.py."""
import sys

from benchmarks.coverage.run import main

if __name__ == "__main__":
    sys.exit(main())
