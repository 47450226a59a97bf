"""``llm2nifti convert`` and ``llm2nifti sites``."""

from __future__ import annotations

from pathlib import Path

import click

from .group import PARTICIPANT, former_name, main, model_options, quiet_option, threads_option

_NEURONS = click.Choice(["mlp", "mlp-out", "attn", "residual", "experts", "mixer"])


def _model_options(f):
    f = click.option("--trust-remote-code", is_flag=True,
                     help="Let transformers run the model's own code (off: only for models you trust).")(f)
    f = click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
                     default="auto", show_default=True, help="Weights' precision; recorded activations are float32.")(f)
    f = click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")(f)
    return f


@main.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@model_options("The model to scan")
@click.option("--text", "-t", default=None,
              help="Text file, folder of .txt files, .jsonl/.tsv table, or a built-in corpus "
                   "(lee, lee-test, pang-lee) [default: lee, 300 news articles].")
@click.option("--site", type=_NEURONS, default="mlp", show_default=True,
              help="mlp: MLP hidden neurons (every routed and shared expert's in a mixture of "
                   "experts); mlp-out: the MLP's output (the paper's units); attn: the heads' outputs "
                   "(input of the attention output projection); residual: each block's output; "
                   "experts: each expert's routing weight; mixer: a state-space mixer's units. "
                   "`llm2nifti sites MODEL` lists what a model has.")
@click.option("--layers", default=None,
              help="Layer subset, e.g. 0-11 or 5,7 [default: every layer with these units].")
@click.option("--experts", default=None,
              help="Mixture of experts, --site mlp or experts: the experts recorded, e.g. 0-7 "
                   "[default: all].")
@click.option("--run-tokens", type=int, default=None,
              help="Tokens (volumes) per run; one forward pass each; at most 32767 and the context "
                   "window [default: 1024, or the context window if shorter].")
@click.option("--max-tokens", type=int, default=None, help="Cap on the total number of tokens.")
@click.option("--task", default=None, help="BIDS task label [default: from the text's name].")
@click.option("--participant", type=PARTICIPANT, default=None,
              help="BIDS participant label [default: from the model's name].")
@click.option("--encoding", default=None, help="Encoding of text files [default: utf-8].")
@click.option("--id-column", default="id", show_default=True, help="Document id column of a .jsonl/.tsv.")
@click.option("--text-column", default="text", show_default=True, help="Text column of a .jsonl/.tsv.")
@click.option("--no-bos", is_flag=True, help="Do not open each document with the BOS token.")
@click.option("--compress", is_flag=True, help="Write .nii.gz (slower, not memory-mappable) instead of .nii.")
@click.option("--resume", is_flag=True, help="Keep finished runs of an interrupted convert; do the rest.")
@click.option("--overwrite", is_flag=True, help="Redo this model's runs of this task in OUTPUT.")
@threads_option
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache of converted GGUF models [default: $LLM2NIFTI_CACHE or $XDG_CACHE_HOME/llm2nifti].")
@quiet_option
@_model_options
@former_name("--neurons", "site", _NEURONS)
@former_name("--label", "participant")
def convert(output, model, gguf_file, text, site, layers, experts, run_tokens, max_tokens, task, participant, encoding,
            id_column, text_column, no_bos, compress, resume, overwrite, threads, cache_dir, quiet,
            device, dtype, trust_remote_code):
    """Record a model reading text; write 4D NIfTI runs into the BIDS-like dataset OUTPUT.

    Each token is one volume (TR = 1 s), each MLP neuron one voxel (layer = z slice).
    """
    from llm2nifti.acquisition.convert import scan

    res = scan(output, model, text, neurons=site, layers=layers, experts=experts,
               run_tokens=run_tokens,
               max_tokens=max_tokens, task=task, label=participant, device=device, dtype=dtype,
               compress=compress, resume=resume, overwrite=overwrite,
               trust_remote_code=trust_remote_code, encoding=encoding, bos=not no_bos,
               threads=threads, progress=not quiet, cache=cache_dir,
               id_column=id_column, text_column=text_column, gguf_file=gguf_file)
    mask = res.root / "derivatives" / "llm2nifti" / f"sub-{res.participant}" / "anat" / \
        f"sub-{res.participant}_desc-{res.layout.site.kind}_mask.nii"
    done = len(res.runs) - len(res.skipped)
    click.echo(f"Wrote {done} run(s) ({res.n_tokens} tokens, {res.layout.n_neurons} neurons, "
               f"grid {res.layout.shape}) to {res.root}"
               + (f"; kept {len(res.skipped)} finished run(s)" if res.skipped else ""))
    click.echo(f"  runs: {res.root}/sub-{res.participant}/func/")
    click.echo(f"  mask: {mask}")
    click.echo(f"  next:  llm2nifti decompose {res.root}   (nilearn itself: "
               "examples/plot_02_nilearn_decomposition.py in the documentation)")


@main.command()
@click.argument("model", required=False)
@click.option("--gguf-file", default=None, help="Which GGUF file of a MODEL folder holding several.")
@click.option("--trust-remote-code", is_flag=True,
              help="Let transformers run the model's own code (off: only for models you trust).")
@click.option("--per-layer", is_flag=True, help="One line per layer and site: modules and widths.")
def sites(model, gguf_file, trust_remote_code, per_layer):
    """List the unit sites of MODEL (default: the embedded model) and their unit counts.

    MODEL is a Hugging Face folder, a .gguf file, ollama:NAME[:TAG] or a cached Hugging Face id.
    Reads the model's configuration only: no weights are loaded. Sites a model lacks are
    listed with the reason.
    """
    from llm2nifti.errors import UsageError
    from llm2nifti.models import load_skeleton
    from llm2nifti.sites import SITE_KINDS, resolve_site

    lm = load_skeleton(model, trust_remote_code=trust_remote_code, gguf_file=gguf_file)
    click.echo(f"{lm.config.name_or_path} ({lm.config.model_type})")
    click.echo("site\thook\tmodule\tlayers\twidth\tneurons")
    found = []
    for kind in SITE_KINDS:
        try:
            s = resolve_site(lm, kind)
        except UsageError as exc:
            click.echo(f"{kind}\t-\t({exc})\t0\t0\t0")
            continue
        found.append(s)
        width = s.width if s.uniform else f"{min(s.widths)}-{s.width}"
        click.echo(f"{kind}\t{s.hook}\t{s.module_template}\t{len(s.layers)}\t{width}\t{s.n_neurons}")
    if per_layer:
        click.echo("\nsite\tlayer\tunits\tparts (module hook width [experts])")
        for s in found:
            for layer in s.layers:
                parts = "; ".join(f"{p.module} {p.hook} {p.width}"
                                  + (f" [{len(p.experts)} experts]" if p.experts else "")
                                  for p in s.parts(layer))
                click.echo(f"{s.kind}\t{layer}\t{s.width_of(layer)}\t{parts}")
