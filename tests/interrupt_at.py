"""Run the llm2nifti command line with a signal sent from inside the process at a chosen point.

Usage: python interrupt_at.py POINT SIGNAL N -- CLI ARGS...

POINT is where the signal is sent, on the N-th time the point is reached:
``write`` (the writer thread, as it starts writing run N), ``written`` (the writer thread,
after run N is recorded), ``result`` (the main thread, inside ``Future.result`` of the writer pool), ``submit``
(the main thread, inside the writer pool's ``submit``), ``lock`` (the main thread, just after it
takes a writer future's lock: in ``result`` or ``add_done_callback``), ``forward`` (the main thread, inside
the forward pass of the N-th run read). SIGNAL is INT, TERM or KILL.
"""

import concurrent.futures
import os
import signal
import sys
import threading


class _FiringCondition:
    """A future's condition that sends the signal right after the main thread takes its lock."""

    def __init__(self, condition, reached, fire):
        self._condition, self._reached, self._fire = condition, reached, fire

    def __enter__(self):
        out = self._condition.__enter__()
        if threading.current_thread() is threading.main_thread() and self._reached():
            self._fire()
            for _ in range(1000):  # the handler runs here, with the lock held
                pass
        return out

    def __exit__(self, *exc):
        return self._condition.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._condition, name)


def main():
    point, signame, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    args = sys.argv[sys.argv.index("--") + 1:]
    sig = getattr(signal, f"SIG{signame}")
    count = {"n": 0}
    lock = threading.Lock()

    def reached():
        with lock:
            count["n"] += 1
            return count["n"] == n

    def fire():
        os.kill(os.getpid(), sig)

    def wrap(owner, name, after=False):
        original = getattr(owner, name)

        def patched(*a, **k):
            hit = reached()
            if hit and not after:
                fire()
            out = original(*a, **k)
            if hit and after:
                fire()
            return out

        setattr(owner, name, patched)

    from bids_llm.dataset import DatasetWriter
    from llm2nifti.acquisition import recording

    if point in ("write", "written"):
        wrap(DatasetWriter, "write_run", after=point == "written")
    elif point in ("result", "submit", "lock"):
        # Only the convert writer pool: transformers uses futures while loading a model.
        submit = concurrent.futures.ThreadPoolExecutor.submit

        def patched_submit(pool, *a, **k):
            ours = pool._thread_name_prefix.startswith("llm2nifti-write")
            if ours and point == "submit" and reached():
                fire()
            future = submit(pool, *a, **k)
            if ours and point == "lock":
                future._condition = _FiringCondition(future._condition, reached, fire)
            if ours and point == "result":
                result = future.result

                def patched_result(*ra, **rk):
                    if reached():
                        fire()
                    return result(*ra, **rk)

                future.result = patched_result
            return future

        concurrent.futures.ThreadPoolExecutor.submit = patched_submit
    elif point == "forward":
        original = recording.Recorder.__enter__

        def enter(self):
            out = original(self)
            if reached():
                _, module = next(iter(self.site.modules(self.model)))
                handle = []

                def once(*a):
                    handle.pop().remove()
                    fire()

                handle.append(module.register_forward_pre_hook(once))
            return out

        recording.Recorder.__enter__ = enter
    else:
        raise SystemExit(f"unknown point {point}")

    from llm2nifti.cli.main import main as cli

    cli(args, prog_name="llm2nifti")


if __name__ == "__main__":
    main()
