"""Stress: interrupt ``llm2nifti convert`` at random moments under CPU load, then resume.

Each round starts a convert of a tiny random Llama (built from a config, no download),
sends SIGINT or SIGKILL after a random delay while every core is kept busy by other
processes, then runs the same convert with ``--resume`` and compares every file with an
uninterrupted reference. Prints how many rounds ended cleanly (SIGINT: exit 130 with the
resume hint, or 0 if the convert had finished; SIGKILL: killed or finished), how many hung
(no exit within --hang seconds), and how many resumed to byte-identical files.

    python benchmarks/stress_interrupt.py            # 50 rounds
    python benchmarks/stress_interrupt.py -n 10 --seed 1

Timing is random on purpose: this is a stress loop, not a test (the deterministic tests are
in tests/test_interrupts.py).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HINT = "Interrupted: finished runs are kept; re-run with --resume to go on."


def _busy(stop):
    x = 0
    while not stop.is_set():
        x = (x * 7 + 1) % 1000003


def _tiny_model(folder):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import TEXT, byte_tokenizer, tiny_llama

    tiny_llama().save_pretrained(folder / "model")
    byte_tokenizer().save_pretrained(folder / "model")
    (folder / "text.txt").write_text(TEXT * 12)
    return folder / "model", folder / "text.txt"


def _cmd(out, model, text, *extra):
    return [sys.executable, "-c", "from llm2nifti.cli.main import main; main()", "convert", str(out),
            "--model", str(model), "--text", str(text), "--run-tokens", "16", "--threads", "1", "-q",
            *extra]


def _identical(ref, out):
    for p in ref.rglob("*"):
        if p.is_file() and not p.name.endswith(".lock"):
            q = out / p.relative_to(ref)
            if not q.is_file() or q.read_bytes() != p.read_bytes():
                return False
    return not list(out.rglob(".tmp-*"))


def _round(i, rng, work, model, text, ref, span, hang):
    """One interrupted convert and its resume: (signal name, clean, hung, identical)."""
    out = work / f"round-{i:03d}"
    sig = rng.choice([signal.SIGINT, signal.SIGKILL])
    proc = subprocess.Popen(_cmd(out, model, text), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(rng.uniform(*span))
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=hang)
        hung = False
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        hung = True
    lines = err.strip().splitlines()
    if sig == signal.SIGINT:
        clean = not hung and (proc.returncode == 0 or (proc.returncode == 130 and lines
                                                       and lines[-1] == HINT))
    else:
        clean = not hung and proc.returncode in (0, -signal.SIGKILL)
    resumed = subprocess.run(_cmd(out, model, text, "--resume"), capture_output=True, text=True)
    identical = resumed.returncode == 0 and _identical(ref, out)
    shutil.rmtree(out, ignore_errors=True)
    return signal.Signals(sig).name, clean, hung, identical


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--rounds", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes")
    p.add_argument("--hang", type=float, default=120.0, help="seconds after which a round hangs")
    a = p.parse_args()

    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="llm2nifti-stress-"))
    stop = mp.Event()
    load = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(a.load)]
    try:
        model, text = _tiny_model(work)
        t0 = time.perf_counter()
        subprocess.run(_cmd(work / "ref", model, text), check=True, capture_output=True)
        unloaded = time.perf_counter() - t0
        for proc in load:
            proc.start()
        # Signals land anywhere from start-up to the last runs.
        span = (0.2 * unloaded, 1.5 * unloaded)
        print(f"reference convert: {unloaded:.1f} s unloaded; {a.rounds} rounds under "
              f"{a.load} busy process(es), signals after {span[0]:.1f}-{span[1]:.1f} s")
        tally = {"SIGINT": [0, 0], "SIGKILL": [0, 0]}
        clean = hangs = identical = 0
        for i in range(a.rounds):
            name, ok, hung, same = _round(i, rng, work, model, text, work / "ref", span, a.hang)
            tally[name][0] += 1
            tally[name][1] += ok
            clean, hangs, identical = clean + ok, hangs + hung, identical + same
            print(f"round {i + 1:3d}: {name:7s} clean={ok} hung={hung} resumed-identical={same}",
                  flush=True)
    finally:
        stop.set()
        for proc in load:
            proc.join(timeout=5)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nclean: {clean}/{a.rounds} (SIGINT {tally['SIGINT'][1]}/{tally['SIGINT'][0]}, "
          f"SIGKILL {tally['SIGKILL'][1]}/{tally['SIGKILL'][0]}); hangs: {hangs}; "
          f"resumed to identical files: {identical}/{a.rounds}")
    return 0 if clean == identical == a.rounds and hangs == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
