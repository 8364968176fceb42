"""cProfile of a whole `fruitlab` command in CPU time (time.process_time: every thread of the process), imports
included: the profile behind the "Fixed costs of a short fit" section of performance.md.

    .venv/bin/python benchmarks/profile_fit.py fit.prof fit -e benchmarks/overhead.yaml --set data.max_per_class=4
    .venv/bin/python -c "import pstats; pstats.Stats('fit.prof').sort_stats('cumulative').print_stats(60)"

CPU time rather than wall time, so that a shared machine's waiting does not count (its cache contention still does).
"""

from __future__ import annotations

import cProfile
import runpy
import sys
import time


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    sys.argv = ["fruitlab", *args]
    profile = cProfile.Profile(time.process_time)
    wall, cpu = time.perf_counter(), time.process_time()
    profile.enable()
    try:
        runpy.run_module("fruitlab.cli", run_name="__main__")
    except SystemExit:
        pass
    finally:
        profile.disable()
        profile.dump_stats(out)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"profile: {wall:.1f} s wall, {cpu:.1f} s CPU, written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
