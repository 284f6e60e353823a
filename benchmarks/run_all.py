"""Run every benchmark, print each table and one ratio line per benchmark.

Each benchmark runs as its own process (its own temp SOLAR_ML_HOME and DAGSTER_HOME, nothing
inherited from the previous one) with this interpreter. `--write-results` also replaces this
command's sections of benchmarks/RESULTS.md (between `<!-- bench:NAME -->` markers), leaving
every other section of the file as it is.

    python benchmarks/run_all.py                   # everything: 20-30 min on 2 cores
    python benchmarks/run_all.py --quick           # smaller sizes, a smoke test
    python benchmarks/run_all.py --write-results   # and record the figures in RESULTS.md
    python benchmarks/run_all.py --only store_scale model_size
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import bench_support as bs

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"

# name -> (full arguments, --quick arguments)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "single_retrain": (["--profile"], ["--days", "7", "--repeats", "1", "--profile"]),
    "fleet_throughput": ([], ["--sizes", "6", "--cron-devices", "3", "--tick-devices", "1000",
                              "--direct-batch-sizes", ""]),
    "store_scale": ([], ["--devices", "10", "--repeats", "5"]),
    "model_size": ([], ["--days", "7", "--load-repeats", "1"]),
    "serving_scale": ([], ["--devices", "200", "--seconds", "5", "--repeats", "100"]),
}
TITLE = "# Benchmark results"


def wait_for_quiet(max_load: float | None, max_wait_s: float) -> None:
    """The machine may be shared: wait (bounded) for the 1-minute load to drop."""
    if max_load is None:
        return
    deadline = time.monotonic() + max_wait_s
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        print(f"(load {bs.load_average()} above {max_load}; waiting)", flush=True)
        time.sleep(30)


def run_one(name: str, arguments: list[str]) -> tuple[int, str, float]:
    """Stream the benchmark's output through while keeping it for the results file."""
    command = [sys.executable, "-W", "ignore", str(HERE / f"{name}.py"), *arguments]
    print(f"\n$ {' '.join([Path(sys.executable).name, '-W', 'ignore', f'benchmarks/{name}.py', *arguments])}",
          flush=True)
    lines = []
    with bs.Stopwatch() as watch:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, cwd=bs.REPO_ROOT)
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        code = process.wait()
    return code, "".join(lines), watch.seconds


def section(name: str, output: str, arguments: list[str], seconds: float) -> str:
    command = " ".join(["python", f"benchmarks/{name}.py", *arguments])
    body = output.strip()
    return (f"<!-- bench:{name} -->\n{body}\n\n_Reproduce: `{command}` "
            f"({seconds:.0f} s on this machine this time)._\n<!-- /bench:{name} -->")


def machine_section() -> str:
    lines = "\n".join(bs.machine_lines())
    return (f"<!-- bench:machine -->\n## Machine and command\n\n{lines}\n\n"
            "All tables below: `python benchmarks/run_all.py --write-results` from the "
            "repository root; each section ends with the command that reproduces it alone "
            "(see benchmarks/README.md). The machine is shared "
            "with other engineers' test runs: the load average is printed beside every table; "
            "with load above the core count, wall times stretch and the CPU-time figures are "
            "the steadier comparison.\n<!-- /bench:machine -->")


def replace_section(text: str, name: str, new: str) -> str:
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: new, text)
    return text.rstrip() + "\n\n" + new + "\n"


def write_results(sections: dict[str, str]) -> None:
    """Re-read the file just before writing: another engineer edits its other sections."""
    text = RESULTS.read_text() if RESULTS.exists() else TITLE + "\n"
    text = replace_section(text, "machine", machine_section())
    for name, new in sections.items():
        text = replace_section(text, name, new)
    temp = RESULTS.with_suffix(".md.tmp")
    temp.write_text(text)
    temp.replace(RESULTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke test")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--write-results", action="store_true",
                        help=f"replace this command's sections of {RESULTS.name}")
    parser.add_argument("--max-load", type=float, default=None,
                        help="before each benchmark, wait until the 1-minute load is below this")
    parser.add_argument("--max-wait", type=float, default=600,
                        help="seconds to wait for --max-load at most (then run anyway)")
    args = parser.parse_args(argv)

    print("\n".join(bs.machine_lines()))
    sections: dict[str, str] = {}
    ratios: list[str] = []
    failed: list[str] = []
    for name in args.only:
        full, quick = BENCHMARKS[name]
        arguments = quick if args.quick else full
        wait_for_quiet(args.max_load, args.max_wait)
        code, output, seconds = run_one(name, arguments)
        if code != 0:
            failed.append(name)
            ratios.append(bs.ratio_line(name, f"FAILED (exit {code})"))
            continue
        ratios.extend(line for line in output.splitlines() if line.startswith("RATIO "))
        sections[name] = section(name, output, arguments, seconds)

    print("\n" + "\n".join(ratios))
    if args.write_results:
        write_results(sections)
        print(f"\nwrote {RESULTS.relative_to(bs.REPO_ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
