"""Interruption at chosen points: every signal is sent from inside the process, never on a timer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llm2nifti import interrupts
from llm2nifti.interrupts import Interrupted, deferred, exit_status, handle_signals

from conftest import TEXT

HERE = Path(__file__).parent
# Generous: a correct run takes seconds; this only turns a hang into a failure.
HANG = 600


def test_signal_inside_deferred_block_is_raised_when_it_ends():
    done = []
    with handle_signals():
        with pytest.raises(Interrupted) as info:
            with deferred():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("rest of the block ran")
        assert done == ["rest of the block ran"]
    assert info.value.signum == signal.SIGINT and exit_status(info.value) == 130


def test_sigterm_outside_deferred_raises_at_once():
    with handle_signals():
        with pytest.raises(Interrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode
                pass
    assert info.value.signum == signal.SIGTERM and exit_status(info.value) == 143


def test_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with handle_signals():
        pass
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_exception_in_block_wins_and_held_signal_follows():
    with handle_signals():
        with pytest.raises(ValueError):
            with deferred():
                os.kill(os.getpid(), signal.SIGINT)
                raise ValueError("the block's own error")
        with pytest.raises(Interrupted):
            interrupts.check()


def test_second_signal_while_held_exits_at_once():
    code = ("import os, signal\n"
            "from llm2nifti.interrupts import handle_signals, deferred\n"
            "with handle_signals(), deferred():\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    print('not reached')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 130 and "not reached" not in r.stdout
    assert "--resume" in r.stderr


# ------------------------------------------------------------- convert, end to end
def _convert_args(out, model_dir, text):
    return ["convert", str(out), "--model", str(model_dir), "--text", str(text),
            "--run-tokens", "16", "--threads", "1", "-q"]


def _run(args, point=None, sig="INT", n=2):
    if point is None:
        cmd = [sys.executable, "-c", "from llm2nifti.cli.main import main; main()", *args]
    else:
        cmd = [sys.executable, str(HERE / "interrupt_at.py"), point, sig, str(n), "--", *args]
    env = dict(os.environ, PYTHONPATH=str(HERE))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=HANG, env=env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("interrupt")
    text = root / "long.txt"
    text.write_text(TEXT * 3)
    ref = root / "ref"
    r = _run(_convert_args(ref, tiny_model_dir, text))
    assert r.returncode == 0, r.stderr
    return text, ref


def _same_files(ref, out):
    files = [p for p in ref.rglob("*") if p.is_file() and ".lock" not in p.name]
    assert files
    for p in files:
        q = out / p.relative_to(ref)
        assert q.is_file() and q.read_bytes() == p.read_bytes(), p.relative_to(ref)
    assert not list(out.rglob(".tmp-*"))


@pytest.mark.parametrize("point,sig,status", [
    ("write", "INT", 130),    # the writer is busy with run 2 when Ctrl-C comes
    ("result", "INT", 130),   # inside Future.result(), which holds the future's lock
    ("submit", "INT", 130),   # inside ThreadPoolExecutor.submit()
    ("lock", "INT", 130),     # just after the main thread took a future's lock
    ("forward", "INT", 130),  # in the middle of a forward pass
    ("forward", "TERM", 143),
    ("written", "KILL", -9),  # killed outright right after run 2 is recorded
])
def test_interrupted_convert_exits_cleanly_and_resumes_identical(tmp_path, tiny_model_dir,
                                                                 reference, point, sig, status):
    text, ref = reference
    out = tmp_path / "ds"
    args = _convert_args(out, tiny_model_dir, text)
    r = _run(args, point, sig, n=2)
    assert r.returncode == status, r.stderr
    if sig != "KILL":
        last = r.stderr.strip().splitlines()[-1]
        assert last == "Interrupted: finished runs are kept; re-run with --resume to go on.", r.stderr
        assert "Traceback" not in r.stderr
    n_ref = len(list(ref.rglob("*_bold.nii")))
    assert len(list(out.rglob("*_bold.nii"))) < n_ref
    r = _run(args + ["--resume"])
    assert r.returncode == 0, r.stderr
    assert "kept" in r.stdout
    _same_files(ref, out)


def test_python_scan_holds_signals_around_the_writer(tmp_path, tokenizer, text_file, monkeypatch):
    """scan() called from Python (no CLI) is as safe: a SIGINT inside the writer pool's lock."""
    import concurrent.futures

    from llm2nifti.acquisition.convert import scan
    from conftest import tiny_llama

    submit = concurrent.futures.ThreadPoolExecutor.submit
    fired = []

    def submit_and_interrupt(pool, *a, **k):
        future = submit(pool, *a, **k)
        if pool._thread_name_prefix.startswith("llm2nifti-write") and len(fired) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # held: the submit has returned by now
        fired.append(1)
        return future

    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit", submit_and_interrupt)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        scan(tmp_path / "ds", "tinyllama", text_file, run_tokens=40, progress=False,
             loaded=(tiny_llama(), tokenizer), threads=1)
    assert signal.getsignal(signal.SIGINT) is before
    assert 0 < len(list((tmp_path / "ds").rglob("*_bold.nii"))) < 6
    assert not list((tmp_path / "ds").rglob(".tmp-*"))
