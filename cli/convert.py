"""``llm2nifti convert`` and ``llm2nifti sites``."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main
from .options import (SITES, device_options, former_name, gguf_file_option, model_options, option,
                      overwrite_option, participant_option, quiet_option, run_tokens_option,
                      site_option, task_option, text_option, threads_option,
                      trust_remote_code_option, word_column_option)


@main.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@model_options("the one scanned")
@text_option("what the model reads", short=True, default_text="lee, 300 news articles")
@option("--words", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A BIDS events file of what human participants heard (onset, duration and the "
             "words), instead of --text: one document each, read in the order given "
             "(repeatable); the events gain each token's word_onset, word_duration and "
             "stimulus_file, and the task label defaults to the file's task entity.")
@word_column_option
@option("--reset-context", is_flag=True,
        help="Begin a run at each document (each --words file): the model reads it without "
             "the one before in its context [default: the context carries across].")
@site_option(value="mlp", describe=True)
@option("--layers", default=None,
        help="Layer subset, e.g. 0-11 or 5,7 [default: every layer with these units].")
@option("--experts", default=None,
        help="Mixture of experts, --site mlp or experts: the experts recorded, e.g. 0-7 "
             "[default: all].")
@run_tokens_option("; at most 32767 and the context window")
@option("--max-tokens", type=int, default=None, help="Cap on the total number of tokens.")
@task_option("from the text's name")
@participant_option("from the model's name")
@option("--encoding", default=None, help="Encoding of text files [default: utf-8].")
@option("--id-column", default="id", show_default=True, help="Document id column of a .jsonl/.tsv.")
@option("--text-column", default="text", show_default=True, help="Text column of a .jsonl/.tsv.")
@option("--no-bos", is_flag=True, help="Do not open each document with the BOS token.")
@option("--compress", is_flag=True, help="Write .nii.gz (slower, not memory-mappable) instead of .nii.")
@option("--resume", is_flag=True, help="Keep finished runs of an interrupted convert; do the rest.")
@overwrite_option("this model's runs of this task in OUTPUT (they are recorded again)")
@threads_option
@option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Cache of converted GGUF models [default: $LLM2NIFTI_CACHE or $XDG_CACHE_HOME/llm2nifti].")
@quiet_option
@device_options()
@former_name("--neurons", "site", click.Choice(list(SITES)))
@former_name("--label", "participant")
def convert(output, model, gguf_file, text, words, word_column, reset_context, site, layers, experts, run_tokens,
            max_tokens, task, participant, encoding, id_column, text_column, no_bos, compress,
            resume, overwrite, threads, cache_dir, quiet, device, dtype, trust_remote_code):
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
               id_column=id_column, text_column=text_column, gguf_file=gguf_file,
               words=words, word_column=word_column, reset_context=reset_context)
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
@gguf_file_option
@trust_remote_code_option
@option("--per-layer", is_flag=True, help="One line per layer and site: modules and widths.")
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
