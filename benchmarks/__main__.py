"""
``python -m benchmarks <command> [options]``: ``compare`` (the quick side-by-side), ``run`` / ``report`` (the seeded
suites and RESULTS.md), ``throughput`` (speed against the references), ``soak`` (1M-step memory soak).
"""

import sys


def main() -> None:
    commands = {
        "compare": "benchmarks.compare",
        "throughput": "benchmarks.throughput",
        "run": "benchmarks.sweep",
        "report": "benchmarks.report",
        "soak": "benchmarks.soak",
    }
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(f"usage: python -m benchmarks {{{','.join(commands)}}} [options]", file=sys.stderr)
        sys.exit(2)
    import importlib

    module = importlib.import_module(commands[sys.argv[1]])
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
