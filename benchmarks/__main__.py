"""`python -m benchmarks [--suite seed,scaling,grad,data,ensemble,sklearn,export,autodiff,startup,
training] [--smoke]
[--out DIR]`: run, record, report."""

import argparse
import datetime
import sys
import time
from pathlib import Path

from benchmarks import (
    autodiff,
    data_size,
    ensemble,
    estimators,
    export,
    grad,
    machine,
    report,
    scaling,
    seed,
    startup,
    targets,
    training,
)

SUITES = {
    "seed": seed.run,
    "scaling": scaling.run,
    "grad": grad.run,
    "data": data_size.run,
    "ensemble": ensemble.run,
    "sklearn": estimators.run,
    "export": export.run,
    "autodiff": autodiff.run,
    "startup": startup.run,
    "training": training.run,
}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--suite",
        default=",".join(SUITES),
        help=f"comma-separated suites to run, from {', '.join(SUITES)} (default: all)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and few repeats: checks the runner")
    parser.add_argument(
        "--out",
        type=Path,
        help="results folder (default: benchmarks/results/<YYYY-MM-DD>-<device>/, with -smoke appended for --smoke)",
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.suite.split(",") if name.strip()]
    unknown = set(chosen) - set(SUITES)
    if unknown or not chosen:
        parser.error(f"unknown suite(s) {sorted(unknown)}; choose from {', '.join(SUITES)}")

    record = machine.describe()
    out = args.out or (
        Path(__file__).parent
        / "results"
        / f"{datetime.date.today().isoformat()}-{machine.slug(record)}{'-smoke' * args.smoke}"
    )
    results = {
        "machine": record,
        "smoke": args.smoke,
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "suites": {},
        "seconds": {},
    }
    for name in chosen:
        print(f"running suite {name}{' (smoke)' * args.smoke} ...", flush=True)
        start = time.perf_counter()
        results["suites"][name] = SUITES[name](args.smoke)
        results["seconds"][name] = round(time.perf_counter() - start, 1)
    results["targets"] = targets.evaluate(results["suites"], record["platform"])
    report.write(results, out)
    print(f"wrote {out}")
    for target in results["targets"]:
        print(f"  {target['status']:>7}  {target['target']}: {target['measured']}")
    return out


if __name__ == "__main__":
    main()
