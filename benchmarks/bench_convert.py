"""Convert vs the bare forward pass, and peak memory at 1x and 4x the tokens.

Usage::

    python benchmarks/bench_convert.py [--tokens 4096] [--run-tokens 1024] [--threads 2]

Prints, measured side by side in one run on the embedded default model and the
Lee corpus:

* the bare forward-pass time over the same runs vs ``scan`` (record + write
  NIfTI, events, sidecars, checksums); goal: ratio <= 1.15 on CPU. ``scan``
  runs the transformer body without the language-model head (the neurons are
  all inside it), so the ratio to a bare forward of the body alone is printed
  too: that one is the price of recording and writing;
* the peak resident memory of a whole ``scan`` process at N and 4N tokens;
  goal: grows < 10% (activations stream to disk run by run).

With ``--moe`` the model is a random-weight OLMoE-shaped mixture of experts scaled to a
laptop (``--moe-shape``: hidden size, layers, experts, top-k, expert width; default
512,8,32,4,256; the embedded model's tokenizer) and ``--neurons`` picks its site (``mlp``:
every expert's hidden neurons; ``experts``: routing weights; ``mlp-out``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def load(moe_shape=None, device="cpu", dtype=None):
    """The embedded model, or a random-weight OLMoE-shaped MoE with its tokenizer."""
    from llm2nifti.models import load_model

    model, tok = load_model()
    if not moe_shape:
        return model, tok
    import torch
    from transformers import OlmoeConfig, OlmoeForCausalLM

    hidden, layers, experts, top_k, width = (int(x) for x in moe_shape.split(","))
    cfg = OlmoeConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                      intermediate_size=width, num_experts=experts, num_experts_per_tok=top_k,
                      max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    moe = OlmoeForCausalLM(cfg).eval().to(device=device, dtype=dtype or torch.float32)
    return moe, tok


def child_scan(out, tokens, run_tokens, threads, moe_shape=None, neurons="mlp"):
    """Run in a fresh process: scan and report peak RSS (ru_maxrss, KiB on Linux)."""
    from llm2nifti.models import set_threads
    from llm2nifti.acquisition.convert import scan

    set_threads(threads)
    loaded = load(moe_shape)
    t = time.perf_counter()
    scan(out, text="lee", max_tokens=tokens, run_tokens=run_tokens, progress=False,
         threads=threads, loaded=loaded, neurons=neurons)
    wall = time.perf_counter() - t
    print(json.dumps({"wall": wall, "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def timed_pair(tokens, run_tokens, threads, repeats, moe_shape=None, neurons="mlp"):
    import torch

    from llm2nifti.models import set_threads
    from llm2nifti.acquisition.convert import scan
    from llm2nifti.acquisition.stimuli import load_documents, make_runs, tokenize_documents

    set_threads(threads)
    model, tok = load(moe_shape)
    stream = tokenize_documents(load_documents("lee"), tok, max_tokens=tokens)
    runs = make_runs(len(stream), run_tokens)

    def bare(module):
        t = time.perf_counter()
        with torch.inference_mode():
            for a, b in runs:
                module(input_ids=torch.as_tensor(stream.ids[a:b])[None], use_cache=False)
        return time.perf_counter() - t

    def convert():
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            scan(f"{d}/ds", text="lee", max_tokens=tokens, run_tokens=run_tokens, progress=False,
                 threads=threads, loaded=(model, tok), neurons=neurons)
            return time.perf_counter() - t

    bare(model)  # warm-up
    full, body, conv = [], [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit all alike
        full.append(bare(model))
        body.append(bare(model.base_model))
        conv.append(convert())
    return min(full), min(body), min(conv), len(stream)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--run-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--moe", action="store_true", help="A random-weight OLMoE-shaped model.")
    ap.add_argument("--moe-shape", default="512,8,32,4,256",
                    help="hidden,layers,experts,top_k,expert_width of --moe.")
    ap.add_argument("--neurons", default="mlp", help="Unit site scanned.")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    shape = a.moe_shape if a.moe else None
    if a.child:
        child_scan(a.child[0], int(a.child[1]), a.run_tokens, a.threads, shape, a.neurons)
        return

    full, body, conv, n = timed_pair(a.tokens, a.run_tokens, a.threads, a.repeats, shape, a.neurons)
    print(f"model: {'OLMoE-shaped MoE ' + shape if shape else 'embedded SmolLM2-135M'}; "
          f"site {a.neurons}")
    print(f"tokens={n} run_tokens={a.run_tokens} threads={a.threads} (best of {a.repeats})")
    print(f"bare forward, whole model (logits)    {full:8.2f} s   {n / full:8.0f} tok/s")
    print(f"bare forward, transformer body        {body:8.2f} s   {n / body:8.0f} tok/s")
    print(f"convert (record + write + checksums)  {conv:8.2f} s   {n / conv:8.0f} tok/s")
    print(f"ratio convert / bare whole-model forward = {conv / full:.3f}   (goal <= 1.15)")
    print(f"ratio convert / bare body forward        = {conv / body:.3f}   "
          "(the cost of recording and writing alone: convert runs the body, no LM head)")

    peaks = {}
    for mult in (1, 4):
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run([sys.executable, __file__, "--run-tokens", str(a.run_tokens),
                                "--threads", str(a.threads), "--site", a.neurons,
                                "--moe-shape", a.moe_shape, *(["--moe"] if a.moe else []),
                                "--child", f"{d}/ds", str(mult * a.tokens)],
                               capture_output=True, text=True, check=True)
            peaks[mult] = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"peak RSS at {mult}x ({mult * a.tokens} tokens): {peaks[mult]['maxrss_mib']:8.0f} MiB "
                  f"(scan {peaks[mult]['wall']:.1f} s)")
    growth = peaks[4]["maxrss_mib"] / peaks[1]["maxrss_mib"] - 1
    print(f"peak RSS growth 1x -> 4x = {100 * growth:+.1f}%   (goal < 10%)")


if __name__ == "__main__":
    main()
