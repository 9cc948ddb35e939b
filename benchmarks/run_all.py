"""Every benchmark in turn, each in a fresh process (``make bench``).

    python -m benchmarks.run_all [--quick] [--out DIR]

The arguments go to every benchmark. Each runs as ``python -m benchmarks.<name>`` in its own
process: ``bench_sharding`` needs 8 fake CPU devices, set before JAX starts, and the others run on
the default devices as a user would. Stops at the first benchmark that fails, with its exit code.
The full runs take about two hours on 2 CPU cores (``bench_lr_transfer`` and ``bench_train``
dominate; see ``benchmarks/README.md``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

BENCHMARKS = (
    "bench_polar",
    "bench_step",
    "bench_sharding",
    "bench_escape_velocity",
    "bench_adaptive",
    "bench_train",
    "bench_lr_transfer",
    "bench_dion",
    "bench_warmup",
    "bench_accelerator",
)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    for name in BENCHMARKS:
        print(f"\n==== benchmarks.{name} {' '.join(args)}", flush=True)
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}", *args])
        if code:
            print(f"benchmarks.{name} failed (exit code {code})", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
