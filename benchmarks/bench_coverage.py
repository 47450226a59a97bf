"""Which causal-LM types of the installed transformers llm2nifti scans, and at which sites.

Walks ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, builds every type tiny (its default config,
shrunk: few layers, narrow widths, four experts; random weights, nothing downloaded), runs a
forward pass, and for each site it offers records a short text and checks that the model's
logits with the recorder attached equal those without it. Prints the counts by class
(dense, mixture of experts, hybrid, state-space) and the reason of every failure; with
``--write-docs`` it rewrites ``docs/models.md``.

    python benchmarks/bench_coverage.py [--types llama,mixtral] [--write-docs]

Encoder-decoder types, and encoders that transformers also runs as decoders (BERT and its
kind), are listed apart and not counted among the decoder-only types.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llm2nifti.acquisition.recording import Recorder  # noqa: E402
from llm2nifti.errors import UsageError  # noqa: E402
from llm2nifti.sites import SITE_KINDS, _find_layers, _get, _text_config, layer_roles, resolve_site  # noqa: E402
from llm2nifti.tiny import VOCAB, shrink_config  # noqa: E402

TOKENS = 12


def classify(model):
    """dense, moe, hybrid (with or without experts), ssm or none, from the layers' roles."""
    cfg = _text_config(model.config)
    roles = [set(layer_roles(l)) for l in _get(model, _find_layers(model, cfg))]
    every = set().union(*roles)
    moe = bool(every & {"moe", "moe-list"})
    if "mixer" in every and "attn" not in every:
        return "ssm" if not moe else "hybrid"
    if "mixer" in every:
        return "hybrid"
    return "moe" if moe else "dense"


class Timeout(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds):
    def raise_timeout(*_):
        raise Timeout(f"took longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, raise_timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def build(model_type):
    from transformers import AutoModelForCausalLM

    cfg = shrink_config(model_type)
    if getattr(cfg, "is_encoder_decoder", False):
        return None, "encoder-decoder"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    if hasattr(_text_config(model.config), "type_vocab_size"):  # BERT's kind, run as a decoder
        return model, "encoder"
    return model, None


def check_site(model, kind, ids):
    """Record ``kind``; the logits must not change. Returns (units, layers) or raises."""
    site = resolve_site(model, kind)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with Recorder(model, site) as rec:
            out = model(input_ids=ids).logits
    X = rec.matrix()
    if X.shape != (ids.shape[1], site.n_neurons):
        raise AssertionError(f"recorded {X.shape}, expected {(ids.shape[1], site.n_neurons)}")
    if not torch.equal(ref, out):
        raise AssertionError("the recorder changed the model's output")
    if not torch.isfinite(torch.from_numpy(X)).all():
        raise AssertionError("recorded values are not finite")
    return site.n_neurons, len(site.layers)


def survey(model_type):
    row = {"type": model_type, "class": "", "sites": {}, "refused": {}, "note": ""}
    try:
        with deadline(60):
            model, skip = build(model_type)
    except Exception as exc:  # noqa: BLE001 -- every failure is a row of the table
        row.update({"class": "does not build", "note": f"{type(exc).__name__}: {str(exc)[:140]}"})
        return row
    if skip:
        row["class"] = skip
        return row
    ids = torch.randint(3, VOCAB - 2, (1, TOKENS))
    try:
        with deadline(60), torch.no_grad():
            model(input_ids=ids)
    except Exception as exc:  # noqa: BLE001
        row.update({"class": "does not run", "note": f"{type(exc).__name__}: {str(exc)[:140]}"})
        return row
    try:
        row["class"] = classify(model)
    except UsageError as exc:
        row.update({"class": "no layers", "note": str(exc)})
        return row
    for kind in SITE_KINDS:
        try:
            with deadline(60):
                row["sites"][kind] = check_site(model, kind, ids)
        except UsageError as exc:
            if "has no" not in str(exc):
                row["refused"][kind] = str(exc)
        except Exception as exc:  # noqa: BLE001
            row["refused"][kind] = f"{type(exc).__name__}: {str(exc)[:140]}"
    return row


CLASSES = ("dense", "moe", "hybrid", "ssm")


def summary(rows):
    lines = []
    decoder = [r for r in rows if r["class"] in CLASSES]
    ok = [r for r in decoder if "mlp" in r["sites"] or (r["class"] == "ssm" and "mixer" in r["sites"])]
    lines.append(f"decoder-only types that build and run: {len(decoder)}; scanned at an MLP site "
                 f"(mixer for pure state-space models): {len(ok)} ({len(ok) / max(len(decoder), 1):.0%})")
    lines.append("")
    lines.append("| class | types | mlp (or mixer) | mlp-out | attn | experts | mixer | residual |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for c in CLASSES:
        rs = [r for r in decoder if r["class"] == c]
        count = lambda k: sum(k in r["sites"] for r in rs)  # noqa: E731
        main = sum("mlp" in r["sites"] or (c == "ssm" and "mixer" in r["sites"]) for r in rs)
        lines.append(f"| {c} | {len(rs)} | {main} | {count('mlp-out')} | {count('attn')} | "
                     f"{count('experts')} | {count('mixer')} | {count('residual')} |")
    other = {}
    for r in rows:
        if r["class"] not in CLASSES:
            other.setdefault(r["class"], []).append(r["type"])
    lines.append("")
    for c, types in sorted(other.items()):
        lines.append(f"- {c} ({len(types)}): {', '.join(types)}")
    return lines


def table(rows):
    lines = ["| type | class | sites (units) | refused, and why |", "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["class"] not in CLASSES, r["class"], r["type"])):
        if r["class"] not in CLASSES:
            continue
        sites = ", ".join(f"{k} ({n:,})" for k, (n, _) in r["sites"].items())
        why = "; ".join(f"{k}: {v}" for k, v in r["refused"].items()).replace("|", "/")
        lines.append(f"| {r['type']} | {r['class']} | {sites} | {why} |")
    return lines


def write_docs(rows, path, elapsed):
    import transformers

    text = ["# Models llm2nifti scans", "",
            "Written by `python benchmarks/bench_coverage.py --write-docs`: every causal-LM type "
            f"of transformers {transformers.__version__}, built tiny from its default config "
            f"(shrunk to few layers and narrow widths, random weights), recorded at each site it "
            "offers over 12 tokens, with the logits checked unchanged by the recorder. Sites are "
            "found from each model's structure (`llm2nifti.sites`); `llm2nifti sites MODEL "
            "--per-layer` shows a real model's. "
            f"The walk took {elapsed:.0f} s on 2 CPU cores.", "", "## Summary", "",
            *summary(rows), "", "## Every decoder-only type", "", *table(rows), ""]
    path.write_text("\n".join(text))


def main(argv=None):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    import transformers

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--types", default=None, help="Comma-separated model types [default: all].")
    p.add_argument("--write-docs", action="store_true", help="Rewrite docs/models.md.")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    types = args.types.split(",") if args.types else list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    t0, rows = time.time(), []
    for t in types:
        row = survey(t)
        rows.append(row)
        sites = ",".join(row["sites"]) or "-"
        refused = "; ".join(f"{k}: {v}" for k, v in row["refused"].items())
        print(f"{t:28s} {row['class']:14s} {sites:40s} {refused or row['note']}", flush=True)
    elapsed = time.time() - t0
    print()
    print("\n".join(summary(rows)))
    print(f"\n{len(types)} types in {elapsed:.0f} s")
    if args.write_docs:
        write_docs(rows, HERE.parent / "docs" / "models.md", elapsed)
    return rows


if __name__ == "__main__":
    main()
