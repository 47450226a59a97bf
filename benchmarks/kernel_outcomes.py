"""Run the suite under each CPU kernel this machine offers and list the tests whose outcome changes.

A test whose result turns on the rounding of one CPU's kernels passes where it was written and
fails on the next machine. This script runs the tests (all of them, or those named) once per
configuration, each in a fresh process:

- ``native``: what torch and numpy pick on this CPU;
- ``torch-<capability>``: ``ATEN_CPU_CAPABILITY`` set to each capability below the native one
  (``default``, ``avx2``, ``avx512`` where the CPU has it);
- ``numpy-baseline``: ``NPY_DISABLE_CPU_FEATURES`` naming every SIMD target numpy dispatches to
  at run time on this CPU (numpy then runs its baseline kernels);
- ``blas-compatible``: torch's BLAS (MKL) in its conditional-reproducibility mode
  (``MKL_CBWR=COMPATIBLE``) and oneDNN held to SSE4.1 (``ONEDNN_MAX_CPU_ISA``): the matrix
  products of another vendor's CPU.

``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` stay as the machine sets them (some processors
need them for correct results). It prints one row per test whose outcome differs between
configurations, and each configuration's totals::

    python benchmarks/kernel_outcomes.py                 # the whole suite, every configuration
    python benchmarks/kernel_outcomes.py tests/test_networks.py --configs native,torch-avx2

With ``--margins``, the native run also records how far each thresholding decision of each
test is from its edge (``benchmarks/decision_margins.py``) and lists the tests whose closest
decision lies within ``--near`` of it: those whose outcome another CPU's rounding could decide.

Exit status 1 when an outcome changes, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _numpy_dispatched():
    """The SIMD targets numpy dispatches to at run time on this CPU (empty where none)."""
    code = ("from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__;"
            "print(' '.join(f for f in __cpu_dispatch__ if __cpu_features__.get(f)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else []


def configurations():
    """``{name: environment changes}`` of the kernels this machine can run."""
    configs = {"native": {}}
    flags = _cpu_flags()
    caps = ["default"] + (["avx2"] if "avx2" in flags else [])
    caps += ["avx512"] if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags else []
    native = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                            capture_output=True, text=True).stdout.strip().lower()
    for cap in caps:
        if cap != native:
            configs[f"torch-{cap}"] = {"ATEN_CPU_CAPABILITY": cap}
    dispatched = _numpy_dispatched()
    if dispatched:
        configs["numpy-baseline"] = {"NPY_DISABLE_CPU_FEATURES": " ".join(dispatched)}
    configs["blas-compatible"] = {"MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    return configs


def run(name, env_changes, tests, folder, margins=None):
    """Outcomes ``{test id: passed|failed|error|skipped}`` of one configuration, and its seconds.

    ``margins``: a file where :mod:`decision_margins` records the run's decisions.
    """
    xml = Path(folder) / f"{name}.xml"
    env = {**os.environ, **env_changes}
    plugin = []
    if margins is not None:
        env["LLM2NIFTI_MARGINS"] = str(margins)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), env.get("PYTHONPATH")]))
        plugin = ["-p", "decision_margins", "-o", "enable_assertion_pass_hook=true"]
        for cache in (ROOT / "tests").glob("__pycache__"):  # asserts rewritten again, with the hook
            shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin,
                    f"--junitxml={xml}", *tests], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    outcomes = {}
    if not xml.exists():
        return outcomes, seconds
    for case in ET.parse(xml).iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcome = ("failed" if "failure" in kinds else "error" if "error" in kinds
                   else "skipped" if "skipped" in kinds else "passed")
        outcomes[test] = outcome
    return outcomes, seconds


def table(results):
    """Markdown rows of the tests whose outcome differs between configurations."""
    names = list(results)
    tests = sorted(set().union(*(r[0] for r in results.values())))
    rows = []
    for test in tests:
        got = [results[n][0].get(test, "absent") for n in names]
        if len(set(got)) > 1:
            rows.append(f"| {test} | " + " | ".join(got) + " |")
    head = ["| test | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    return head + rows if rows else []


def near_decisions(path, near):
    """Markdown rows: per test and kind of decision, the smallest margin, where below ``near``.

    ``units`` (one unit's membership) is listed for information only: with hundreds of units one
    is always near the line, and it matters only to a test that compares exact unit sets made
    by two code paths.
    """
    smallest = {}
    with open(path, encoding="utf-8") as f:
        for text in f:
            rec = json.loads(text)
            key = (rec["test"], rec["kind"], rec.get("where", ""))
            smallest[key] = min(smallest.get(key, np.inf), rec["margin"])
    rows = [(m, t, k, w) for (t, k, w), m in smallest.items() if m < near]
    rows.sort(key=lambda r: (r[2] == "units", r[0]))
    out = ["| test | decision | where | smallest margin |", "|---|---|---|---|"]
    out += [f"| {t} | {k} | {w} | {m:.3g} |" for m, t, k, w in rows]
    return out if rows else []


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tests", nargs="*", help="test files or node ids (default: the whole suite)")
    parser.add_argument("--configs", help="comma-separated configurations (default: every one "
                        "this machine offers)")
    parser.add_argument("--list", action="store_true", help="list the configurations and exit")
    parser.add_argument("--margins", action="store_true", help="record the native run's "
                        "thresholding decisions and list those near their edge")
    parser.add_argument("--near", type=float, default=0.05, help="a decision within this of "
                        "its line is listed (z units, IoU, p)  [default: 0.05]")
    args = parser.parse_args(argv)
    configs = configurations()
    if args.list:
        for name, env in configs.items():
            print(name, " ".join(f"{k}={v}" for k, v in env.items()))
        return 0
    if args.configs:
        unknown = set(args.configs.split(",")) - set(configs)
        if unknown:
            parser.error(f"unknown configuration {', '.join(sorted(unknown))}: one of {', '.join(configs)}")
        configs = {n: configs[n] for n in args.configs.split(",")}
    results, near = {}, []
    with tempfile.TemporaryDirectory() as folder:
        for name, env in configs.items():
            print(f"{name}: {' '.join(f'{k}={v}' for k, v in env.items()) or '(as the machine is)'}",
                  flush=True)
            margins = Path(folder) / "margins.jsonl" if args.margins and name == "native" else None
            results[name] = run(name, env, args.tests, folder, margins)
            if margins is not None and margins.exists():
                near = near_decisions(margins, args.near)
            counts = {}
            for outcome in results[name][0].values():
                counts[outcome] = counts.get(outcome, 0) + 1
            print(f"  {', '.join(f'{v} {k}' for k, v in sorted(counts.items()))} in "
                  f"{results[name][1]:.0f} s", flush=True)
    rows = table(results)
    print()
    if args.margins and "native" in results:
        if near:
            print(f"Decisions within {args.near} of their line (native run):")
            print("\n".join(near))
        else:
            print(f"No decision within {args.near} of its line (native run).")
        print()
    if rows:
        print("Tests whose outcome changes with the kernels:")
        print("\n".join(rows))
        return 1
    print(f"No test changes its outcome across {len(results)} configurations.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
