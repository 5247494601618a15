"""The paper's evaluation (§IV) for galdecon: ``galdecon bench`` as a script.

    python benchmarks/paper.py -o results/bench                 # n = 10,000, local[2]
    python benchmarks/paper.py -o results/bench-small -n 1000 --partitions 2 4 --sync 1 4
    python benchmarks/paper.py -o results/bench-cluster --cluster   # master + 2 workers

Every option of ``galdecon bench --help`` applies.
"""

import sys

from galdecon.cli.app import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
