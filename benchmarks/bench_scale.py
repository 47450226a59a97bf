"""A 7B-shape scan with planted networks: write it, decompose it, check the networks came back.

Usage::

    python benchmarks/bench_scale.py /tmp/scale                      # 32 x 11,008 units, 16,384 tokens (~23 GB)
    python benchmarks/bench_scale.py /tmp/scale --scheduler processes --workers 2
    python benchmarks/bench_scale.py /tmp/small --layers 4 --width 512 --tokens 4096   # minutes -> seconds

The scan is written through ``NeuronLayout`` and the dataset writer, as a real convert
writes it: Gaussian noise in every unit plus ``--networks`` planted networks, each a fixed
set of ``--size`` units spread over all layers that share one heavy-tailed (Laplace) time
course. The scan is then decomposed with the fast CanICA backend (``-k`` components) in a
fresh process, and the benchmark prints wall time, the decomposing process's peak resident
memory, the bytes it read, and whether every planted network came back neuron-exactly
(as one network with exactly its units, |z| > 3.6). Nothing is timed in a test; a test runs
this script at a small size and checks the planted networks come back.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PARTICIPANT, TASK = "synthetic", "planted"


def write_scan(root, layers, width, tokens, run_tokens, networks, size, noise, seed, quiet=False,
               device=None):
    """Write the synthetic scan; return the planted sets (layer-major global indices).

    With ``device`` (a torch CUDA device), the noise is drawn there (torch's generator: other
    numbers than numpy's, as reproducible), which is what makes a 46 GB scan quick to write.
    """
    from bids_llm.dataset import DatasetWriter
    from bids_llm.events import events_tsv
    from llm2nifti.layout import NeuronLayout
    from llm2nifti.sites import Site

    layout = NeuronLayout(Site("mlp", "llama", "model.layers.{layer}.mlp.down_proj", "pre",
                               width, layers))
    rng = np.random.default_rng(seed)
    pick = rng.permutation(layout.n_neurons)[: networks * size]
    sets = [np.sort(pick[i * size:(i + 1) * size]) for i in range(networks)]
    writer = DatasetWriter(root, PARTICIPANT, TASK, layout, name="synthetic 7B-shape scan")
    writer.init_dataset()
    writer.add_participant({"model": "synthetic", "architecture": "llama", "n_layers": layers,
                            "neurons_per_layer": width, "n_parameters": 0, "weights_sha256": "0"})
    writer.write_layout()
    for r, start in enumerate(range(0, tokens, run_tokens), 1):
        if writer.run_done(r, verify=False):
            continue
        T = min(run_tokens, tokens - start)
        if device is None:
            X = rng.standard_normal((T, layout.n_neurons), dtype=np.float32)
        else:
            import torch

            gen = torch.Generator(device).manual_seed(seed * 100003 + r)
            X = torch.randn((T, layout.n_neurons), generator=gen, device=device).cpu().numpy()
        X *= noise
        for idx in sets:
            course = rng.laplace(size=T).astype(np.float32)
            X[:, idx] += course[:, None]
        events = events_tsv(["x"] * T, [0] * T, ["d"] * T, list(range(T)))
        writer.write_run(r, layout.to_img(X), {"TaskName": TASK, "RepetitionTime": 1.0,
                                               "NeuronLayout": layout.to_dict()}, events)
        del X
        if not quiet:
            print(f"  wrote run {r} ({T} tokens)", flush=True)
    return layout, sets


def decompose_worker(args):
    """In its own process: decompose and report time, peak RSS, bytes read, recovery."""
    import torch

    torch.set_num_threads(args.threads)
    from bids_llm.dataset import Dataset
    from llm2nifti.analysis.decomposition import Decomposition, select_runs
    from llm2nifti.analysis.selection import maps_to_neurons

    sets = [np.asarray(s) for s in json.loads(Path(args.root, "planted.json").read_text())]
    runs, layout = select_runs(Dataset(args.root), verify=False)
    io0 = _io()
    t0 = time.perf_counter()
    est = Decomposition(backend="fast", n_components=args.k, n_init=args.n_init,
                        scheduler=args.scheduler, workers=args.workers, device=args.device,
                        verbose=1).fit(runs, layout=layout)
    seconds = time.perf_counter() - t0
    io1 = _io()
    found = maps_to_neurons(est.components_, layout, threshold=3.6)
    got = [set(found.select(n).global_index(layout).tolist()) for n in found.names]
    exact = sum(any(set(s.tolist()) == g for g in got) for s in sets)
    print(json.dumps({"seconds": seconds, "peak_rss_gib": _peak_gib(),
                      "bytes_read": io1.get("read_bytes", 0) - io0.get("read_bytes", 0),
                      "exact": exact, "planted": len(sets)}))


def _io():
    try:
        return {k: int(v) for k, v in (line.split(": ") for line in
                                       Path("/proc/self/io").read_text().splitlines())}
    except OSError:  # not Linux
        return {}


def _peak_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 ** 2


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="Folder of the synthetic scan (kept: a second call reuses it).")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--width", type=int, default=11008)
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--run-tokens", type=int, default=1024)
    p.add_argument("--networks", type=int, default=10)
    p.add_argument("--size", type=int, default=200, help="Units per planted network.")
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("-k", "--k", type=int, default=20)
    p.add_argument("--n-init", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scheduler", default="threads")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return decompose_worker(args)
    root = Path(args.root)
    n_units = args.layers * args.width
    gb = n_units * args.tokens * 4 / 1e9
    print(f"synthetic scan: {args.layers} x {args.width} = {n_units:,} units, {args.tokens:,} "
          f"tokens, {gb:.1f} GB of float32; {args.networks} planted networks of {args.size} units")
    t0 = time.perf_counter()
    _, sets = write_scan(root, args.layers, args.width, args.tokens, args.run_tokens,
                         args.networks, args.size, args.noise, args.seed)
    (root / "planted.json").write_text(json.dumps([s.tolist() for s in sets]))
    print(f"written in {time.perf_counter() - t0:.1f} s")
    cmd = [sys.executable, __file__, str(root), "--worker"] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
        if k not in ("root", "worker")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        return out.returncode
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"decompose (fast CanICA, k={args.k}, {args.n_init} starts, scheduler={args.scheduler}, "
          f"{args.threads} threads): {r['seconds']:.1f} s; peak RSS {r['peak_rss_gib']:.2f} GiB "
          f"(this process); {r['bytes_read'] / 1e9:.1f} GB read from disk by this process "
          f"(memory-mapped runs; workers' reads are theirs)")
    print(f"planted networks recovered neuron-exactly: {r['exact']} of {r['planted']}"
          + (" (all)" if r["exact"] == r["planted"] else ""))
    return 0 if r["exact"] == r["planted"] else 1


if __name__ == "__main__":
    sys.exit(main())
