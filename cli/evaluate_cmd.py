"""``llm2nifti evaluate`` and ``llm2nifti prune``."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main
from .options import (CommaList, dataset_option, decomposition_options, device_options, former_name,
                      heldout_option, max_doc_tokens_option, model_options, n_docs_option,
                      network_names_option, option, output_option, overwrite_option,
                      participant_option, quiet_option, seeds_option, threads_option)


@main.command()
@click.argument("networks", type=click.Path(path_type=Path))
@dataset_option("the scan the networks were found on (layout, neuron spread, documents to "
          "avoid)")
@output_option(required=True)
@model_options("the one scanned")
@participant_option()
@network_names_option
@heldout_option
@option("--eval-task", "task", default="pang-lee", show_default=True,
        help="Task: pang-lee (built in), a local file (JSONL or TSV of labelled sentences "
             "text,label; JSONL of multiple choice prompt,choices,answer; JSONL of open "
             "questions prompt or question[,context],answers scored by exact match and F1), "
             "or 'none'.")
@option("--template", default=None,
        help="Prompt made of a task file's columns, e.g. 'Review: {text}\\nSentiment:' "
             "[labelled: '{text}\\nAnswer:'].")
@option("--label-words", default=None,
        help="Answer word per label of a labelled task, e.g. 0=negative,1=positive "
             "[default: the labels]; each must be a single token.")
@option("--max-new-tokens", type=int, default=16, show_default=True,
        help="Open questions: longest greedy answer (it also stops at a newline).")
@option("--bigbench", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
        help="A local BIG-bench multiple-choice task.json, instead of --task.")
@n_docs_option(None, ": the whole held-out text")
@option("--n-items", type=int, default=None, help="Use N task items (stratified by label).")
@max_doc_tokens_option(128, ": perplexity over a document's opening")
@seeds_option
@option("--amplify", type=CommaList(float), default="0.5", show_default=True,
        help="Constants added to the network neurons, comma-separated; 'none' to skip.")
@option("--no-amplify-controls", is_flag=True, help="Do not amplify random sets as controls.")
@option("--ablation", "ablations", type=CommaList(), default="zero", show_default=True,
        help="What inhibit and retain put in place of a unit: zero, mean (its mean over the "
             "scan's tokens), or zero,mean for both; controls use the same kind.")
@option("--curve", type=CommaList(int), default="", help="Numbers of networks kept for the retain curve, e.g. 1,5,10.")
@option("--curve-networks", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Another networks.tsv of the same scan (e.g. a lower threshold) kept as one more "
             "curve point; repeatable.")
@option("--curve-seeds", type=int, default=None,
        help="Random sets per curve point (threshold curve and FN@k) [default: --seeds].")
@option("--k", "fnk", type=CommaList(), default="",
        help="FN@k curve: decompose the scan once per k (e.g. 10,32,64,128), keep alone and "
             "zero the union of each decomposition's networks, against random sets.")
@decomposition_options("fn_at_k", prefix="k-", into="fnk_estimator", keep=(),
                 only=("backend", "fastica", "n_repeats"))
@option("--k-threshold", type=float, default=None,
        help="|z| threshold of the FN@k networks [default: the one that made NETWORKS, else 3.6].")
@option("--massive-factor", type=float, default=100.0, show_default=True,
        help="Massive neurons: peak |activation| above this many times the median peak.")
@option("--allow-overlap", is_flag=True,
        help="Warn instead of refusing when evaluation text was part of the scan.")
@option("--batch-size", type=int, default=8, show_default=True)
@option("--n-resamples", type=int, default=2000, show_default=True,
        help="Bootstrap resamples per confidence interval.")
@threads_option
@device_options(trust_remote_code=False)
@quiet_option
@former_name("--bootstrap", "n_resamples", int)
@former_name("--task", "task")
def evaluate(networks, dataset, output, model, gguf_file, participant, network_names, heldout, task,
             template, label_words, max_new_tokens, bigbench,
             n_docs, n_items, max_doc_tokens, seeds, amplify, no_amplify_controls, ablations, curve,
             curve_networks, curve_seeds, fnk, fnk_estimator, k_threshold,
             massive_factor, allow_overlap, batch_size, n_resamples, threads, device, dtype, quiet):
    """Inhibit, retain and amplify the neurons of NETWORKS (a networks.tsv) against controls.

    Controls have the same count per layer: uniform random and spread-matched random sets (one
    per seed), the highest-spread neurons, and the key set without massive-activation neurons.
    """
    from llm2nifti.intervention.experiment import evaluate as run_evaluate

    none = ("", "none")
    res = run_evaluate(
        networks, dataset, output, model=model, gguf_file=gguf_file, participant=participant,
        network_names=list(network_names or ()) or None,
        heldout=None if heldout.lower() in none else heldout,
        task=None if task.lower() in none else task, bigbench=bigbench,
        template=None if template is None else template.replace("\\n", "\n").replace("\\t", "\t"),
        label_words=label_words, max_new_tokens=max_new_tokens, n_docs=n_docs,
        n_items=n_items, max_doc_tokens=max_doc_tokens, seeds=seeds, amplify=amplify,
        amplify_controls=not no_amplify_controls, curve=curve, curve_networks=curve_networks,
        curve_seeds=None if curve_seeds is None else list(range(curve_seeds)),
        fnk=fnk, fnk_estimator=fnk_estimator, fnk_threshold=k_threshold,
        massive_factor=massive_factor, allow_overlap=allow_overlap, ablations=list(ablations),
        device=device, dtype=dtype,
        threads=threads, batch_size=batch_size, n_resamples=n_resamples, progress=not quiet)
    s = res.settings
    click.echo(f"{s['n_key_neurons']} key neurons ({100 * s['key_share']:.1f}%) in {s['n_networks']} "
               f"networks; {len(res.results)} results in {s['seconds']} s")
    for line in res.verdicts:
        click.echo("  " + line)
    empty = [str(e["k"]) for e in s.get("fnk", []) if e["n_neurons"] == 0]
    if empty:
        click.echo(f"  FN@k left out at k = {', '.join(empty)}: no unit past the threshold "
                   "(lower --k-threshold)")
    click.echo(f"  results: {res.output / 'results.tsv'}")
    click.echo(f"  summary: {res.output / 'summary.tsv'}")
    for f in res.figures:
        click.echo(f"  figure:  {f}")


@main.command()
@click.argument("networks", type=click.Path(path_type=Path))
@output_option(required=True)
@model_options("pruned")
@network_names_option
@option("--remove", is_flag=True,
        help="Remove the network neurons and keep the rest [default: keep only the network neurons].")
@heldout_option
@n_docs_option(20, ": a quick comparison of the three models")
@max_doc_tokens_option(128, ": perplexity over a document's opening")
@overwrite_option("OUTPUT if it exists")
@threads_option
@device_options(trust_remote_code=False)
def prune(networks, output, model, gguf_file, network_names, remove, heldout, n_docs, max_doc_tokens,
          overwrite, threads, device, dtype):
    """Save a smaller model without the MLP neurons outside NETWORKS (or, with --remove, inside).

    Reports parameters, file size, forward speed and perplexity of the unpruned, the masked
    (unpruned, other neurons zeroed) and the pruned model.
    """
    from llm2nifti.intervention.pruning import prune as run_prune

    res = run_prune(networks, output, model=model, gguf_file=gguf_file, networks_names=list(network_names or ()) or None,
                    remove=remove, heldout=heldout, n_docs=n_docs, max_doc_tokens=max_doc_tokens,
                    overwrite=overwrite, device=device, dtype=dtype, threads=threads)
    r = res.report
    click.echo(f"Kept {r['neurons_kept']} of {r['neurons_total']} MLP neurons ({r['kept']}); "
               f"width {r['width_before']} -> {r['width_after']}")
    click.echo(f"  parameters: {r['parameters_before']:,} -> {r['parameters_after']:,} "
               f"(-{100 * r['parameters_removed_share']:.1f}%)")
    click.echo(f"  file size:  {r['bytes_before'] / 2**20:.1f} MiB -> {r['bytes_after'] / 2**20:.1f} MiB")
    click.echo(f"  speed:      {r['tokens_per_second_before']:.0f} -> {r['tokens_per_second_after']:.0f} tokens/s")
    click.echo(f"  perplexity: unpruned {r['perplexity_unpruned']:.4g}, masked {r['perplexity_masked']:.4g}, "
               f"pruned {r['perplexity_pruned']:.4g} (max logit difference pruned vs masked "
               f"{r['max_abs_logit_difference_pruned_vs_masked']:.2g})")
    click.echo(f"  model:      {res.output}")
