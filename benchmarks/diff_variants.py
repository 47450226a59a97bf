"""``diff`` and ``patch`` of the embedded model against variants that change it in known ways.

Derived from SmolLM2-135M-Instruct (``llm2nifti derive``): a copy with 64 MLP units of the
middle layer doubled through the weights (the planted truth), a briefly fine-tuned copy (on the
Pang & Lee sentences), a 4-bit-rounded copy and a magnitude-pruned copy (30% of each linear
layer's weights set to 0). Every model reads the same Lee news tokens at the ``mlp`` site; each
variant is compared with the base (``diff``) and its changed units are patched (``patch``).

    python benchmarks/diff_variants.py WORKDIR [--tokens 4096] [--steps 200] [--write-docs]

Prints one row per variant: units changed per test, the first layer with a change, the
planted units' recall (amplified), networks changed, and the patching verdicts.
``--write-docs`` writes the table and figures into ``docs/guide/diff.md``'s results section.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).parent / "llm2nifti")]
VARIANTS = {"amplified": ["--layer", "15", "--neurons", "64", "--factor", "2"],
            "finetuned": ["--text", "pang-lee"], "quantized": ["--bits", "4"],
            "pruned": ["--fraction", "0.3"]}


def run(*args, log):
    t0 = time.perf_counter()
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    log.append((" ".join(map(str, args)), round(seconds, 1)))
    print(f"[{seconds:7.1f} s] llm2nifti {' '.join(map(str, args))}", flush=True)
    if done.returncode != 0:
        sys.exit(done.stdout + done.stderr)
    return done.stdout


def _row(ds, name, work, diff_out, patch_out, seconds):
    folder = ds / "derivatives" / "llm2nifti-diff" / f"sub-{name}" / "func"
    units = pd.read_csv(next(folder.glob("*_units.tsv")), sep="\t")
    layers = pd.read_csv(next(folder.glob("*_layers.tsv")), sep="\t")
    nets = pd.read_csv(next(folder.glob("*_desc-vsbase_networks.tsv")), sep="\t")
    row = {"variant": name, "diff_s": seconds}
    for test in ("mean", "amplitude"):
        changed = layers[(layers["test"] == test) & (layers["n_changed"] > 0)]
        row[f"{test}_units"] = int((units["test"] == test).sum())
        row[f"{test}_first_layer"] = int(changed["layer"].min()) if len(changed) else None
    info = json.loads((work / name / "variant.json").read_text())
    if name == "amplified":
        amp = units[(units["test"] == "amplitude") & (units["layer"] == info["Layer"])]
        row["planted_recall"] = float(pd.Series(info["Neurons"]).isin(amp["neuron"]).mean())
        row["before_planted_layer"] = int((units["layer"] < info["Layer"]).sum())
    row["networks_amplitude_changed"] = int((nets["amplitude_p_fwe"] <= 0.05).sum())
    row["networks_shape_changed"] = int((nets["shape_n_changed"] > 0).sum())
    row["patching"] = " | ".join(line for line in patch_out.splitlines() if not line.startswith("Wrote"))
    return row, folder


MARKER = "<!-- diff-results -->"


def _fmt(v):
    if v is None or v != v:
        return "-"
    return f"{v:.0%}" if isinstance(v, float) and v <= 1 else f"{v:,}" if isinstance(v, int) else str(v)


def markdown(rows, tokens, log):
    """The guide's results section: one row per variant, then the patching verdicts."""
    lines = [MARKER, "",
             f"Each variant and the base read the first {tokens:,} tokens of the Lee news corpus at "
             "the `mlp` site (30 layers x 1,536 units); `diff` with its defaults (1,000 sign flips "
             "of whole documents, FWE 0.05, group CanICA of 20 stable networks), `patch` with its "
             "defaults (20 documents of 64 tokens, 5 random sets).", "",
             "| variant | units changed: mean / amplitude | first changed layer | planted units found "
             "| units before the planted layer | networks: amplitude / shape changed |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['mean_units']:,} / {r['amplitude_units']:,} | "
            f"{_fmt(r['mean_first_layer'])} / {_fmt(r['amplitude_first_layer'])} | "
            f"{_fmt(r.get('planted_recall'))} | {_fmt(r.get('before_planted_layer'))} | "
            f"{r['networks_amplitude_changed']} / {r['networks_shape_changed']} of 20 |")
    lines += ["", "Patching (the variant with its changed units set to the base's values):", ""]
    for r in rows:
        for part in r["patching"].split(" | "):
            lines.append(f"- **{r['variant']}**, {part}")
    lines.append("")
    lines += [f"![{r['variant']}: units changed per layer](../figures/diff-{r['variant']}-layers.png)"
              for r in rows]
    return "\n".join(lines) + "\n"


def write_docs(rows, tokens, log):
    guide = ROOT / "docs" / "guide" / "diff.md"
    text = guide.read_text()
    guide.write_text(text[: text.index(MARKER)] + markdown(rows, tokens, log))
    print(f"Wrote {guide}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--render-only", action="store_true",
                    help="Only write the guide's section from WORKDIR/diff_variants.json.")
    a = ap.parse_args()
    if a.render_only:
        done = json.loads((a.work / "diff_variants.json").read_text())
        return write_docs(done["rows"], done.get("tokens", a.tokens), done["log"])
    a.work.mkdir(parents=True, exist_ok=True)
    log, ds = [], a.work / "ds"
    threads = ["--threads", a.threads]
    run("convert", ds, "--participant", "base", "--max-tokens", a.tokens, "--resume", "-q", *threads,
        log=log)
    rows = []
    for name in a.variants.split(","):
        if not (a.work / name / "config.json").is_file():
            extra = VARIANTS[name] + (["--steps", a.steps] if name == "finetuned" else [])
            run("derive", a.work / name, "--kind", name, *extra, "-q", *threads, log=log)
        run("convert", ds, "--model", a.work / name, "--participant", name, "--max-tokens", a.tokens,
            "--resume", "-q", *threads, log=log)
        t0 = time.perf_counter()
        out = run("diff", ds, "-r", "base", "-c", name, "-q", *threads, log=log)
        seconds = round(time.perf_counter() - t0, 1)
        print(out, flush=True)
        units = next((ds / "derivatives" / "llm2nifti-diff" / f"sub-{name}").rglob("*_units.tsv"))
        patch_out = run("patch", units, "-d", ds, "-r", "base", "-c", name, *threads, log=log)
        print(patch_out, flush=True)
        row, folder = _row(ds, name, a.work, out, patch_out, seconds)
        rows.append(row)
        if a.write_docs:
            target = ROOT / "docs" / "figures" / f"diff-{name}-layers.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(next(folder.glob("*_layers.png")), target)
    frame = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 400)
    print(frame.drop(columns=["patching"]).to_string(index=False))
    for r in rows:
        print(f"{r['variant']}: {r['patching']}")
    (a.work / "diff_variants.json").write_text(json.dumps({"rows": rows, "log": log,
                                                          "tokens": a.tokens}, indent=1))
    if a.write_docs:
        write_docs(rows, a.tokens, log)


if __name__ == "__main__":
    main()
