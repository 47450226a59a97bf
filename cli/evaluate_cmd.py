"""``llm2nifti evaluate`` and ``llm2nifti prune``."""

from __future__ import annotations

from pathlib import Path

import click

from .group import PARTICIPANT, main, model_options, quiet_option, threads_option


def _floats(value):
    if value is None or str(value).strip() in ("", "none"):
        return ()
    try:
        return tuple(float(v) for v in str(value).split(","))
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {value!r}") from None


def _ints(value):
    return tuple(int(v) for v in _floats(value))


def _names(value):
    return None if not value else [v.strip() for v in value.split(",") if v.strip()]


@main.command()
@click.argument("networks", type=click.Path(path_type=Path))
@click.option("--dataset", "-d", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The scan the networks were found on (layout, neuron spread, documents to avoid).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for results.tsv, summary.tsv, evaluation.json and the figures.")
@model_options("The scanned model")
@click.option("--participant", type=PARTICIPANT, default=None, help="Participant of DATASET [default: its only one].")
@click.option("--networks", "network_names", default=None, help="Networks to use, e.g. 0,3 [default: all].")
@click.option("--heldout", default="lee-test", show_default=True,
              help="Held-out text for perplexity (a built-in corpus, file or folder); 'none' to skip.")
@click.option("--task", default="pang-lee", show_default=True,
              help="Task: pang-lee (built in), a local file (JSONL or TSV of labelled sentences "
                   "text,label; JSONL of multiple choice prompt,choices,answer; JSONL of open "
                   "questions prompt or question[,context],answers scored by exact match and F1), "
                   "or 'none'.")
@click.option("--template", default=None,
              help="Prompt made of a task file's columns, e.g. 'Review: {text}\\nSentiment:' "
                   "[labelled: '{text}\\nAnswer:'].")
@click.option("--label-words", default=None,
              help="Answer word per label of a labelled task, e.g. 0=negative,1=positive "
                   "[default: the labels]; each must be a single token.")
@click.option("--max-new-tokens", type=int, default=16, show_default=True,
              help="Open questions: longest greedy answer (it also stops at a newline).")
@click.option("--bigbench", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A local BIG-bench multiple-choice task.json, instead of --task.")
@click.option("--n-docs", type=int, default=None, help="Use only the first N held-out documents.")
@click.option("--n-items", type=int, default=None, help="Use N task items (stratified by label).")
@click.option("--max-doc-tokens", type=int, default=128, show_default=True,
              help="Cut each held-out document to this many tokens.")
@click.option("--seeds", type=int, default=5, show_default=True, help="Random sets per control.")
@click.option("--amplify", default="0.5", show_default=True,
              help="Constants added to the network neurons, comma-separated; 'none' to skip.")
@click.option("--no-amplify-controls", is_flag=True, help="Do not amplify random sets as controls.")
@click.option("--ablation", default="zero", show_default=True,
              help="What inhibit and retain put in place of a unit: zero, mean (its mean over the "
                   "scan's tokens), or zero,mean for both; controls use the same kind.")
@click.option("--curve", default="", help="Numbers of networks kept for the retain curve, e.g. 1,5,10.")
@click.option("--curve-networks", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Another networks.tsv of the same scan (e.g. a lower threshold) kept as one more "
                   "curve point; repeatable.")
@click.option("--curve-seeds", type=int, default=None,
              help="Random sets per curve point (threshold curve and FN@k) [default: --seeds].")
@click.option("--k", "fnk", default="",
              help="FN@k curve: decompose the scan once per k (e.g. 10,32,64,128), keep alone and "
                   "zero the union of each decomposition's networks, against random sets.")
@click.option("--k-backend", type=click.Choice(["fast", "nilearn"]), default="fast", show_default=True,
              help="CanICA backend of the FN@k decompositions.")
@click.option("--k-n-init", type=int, default=None,
              help="FastICA starts of each FN@k decomposition [default: 10; 1 for each of "
                   "--k-n-runs].")
@click.option("--k-n-runs", type=int, default=10, show_default=True,
              help="Decompositions per k clustered into stable components (1: one per k).")
@click.option("--k-threshold", type=float, default=None,
              help="|z| threshold of the FN@k networks [default: the one that made NETWORKS, else 3.6].")
@click.option("--massive-factor", type=float, default=100.0, show_default=True,
              help="Massive neurons: peak |activation| above this many times the median peak.")
@click.option("--allow-overlap", is_flag=True,
              help="Warn instead of refusing when evaluation text was part of the scan.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--bootstrap", "n_resamples", type=int, default=2000, show_default=True,
              help="Bootstrap resamples per confidence interval.")
@threads_option
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
              show_default=True)
@quiet_option
def evaluate(networks, dataset, output, model, gguf_file, participant, network_names, heldout, task,
             template, label_words, max_new_tokens, bigbench,
             n_docs, n_items, max_doc_tokens, seeds, amplify, no_amplify_controls, ablation, curve,
             curve_networks, curve_seeds, fnk, k_backend, k_n_init, k_n_runs, k_threshold,
             massive_factor, allow_overlap, batch_size, n_resamples, threads, device, dtype, quiet):
    """Inhibit, retain and amplify the neurons of NETWORKS (a networks.tsv) against controls.

    Controls have the same count per layer: uniform random and spread-matched random sets (one
    per seed), the highest-spread neurons, and the key set without massive-activation neurons.
    """
    from llm2nifti.intervention.experiment import evaluate as run_evaluate

    none = ("", "none")
    res = run_evaluate(
        networks, dataset, output, model=model, gguf_file=gguf_file, participant=participant,
        network_names=_names(network_names),
        heldout=None if heldout.lower() in none else heldout,
        task=None if task.lower() in none else task, bigbench=bigbench,
        template=None if template is None else template.replace("\\n", "\n").replace("\\t", "\t"),
        label_words=label_words, max_new_tokens=max_new_tokens, n_docs=n_docs,
        n_items=n_items, max_doc_tokens=max_doc_tokens, seeds=seeds, amplify=_floats(amplify),
        amplify_controls=not no_amplify_controls, curve=_ints(curve), curve_networks=curve_networks,
        curve_seeds=None if curve_seeds is None else list(range(curve_seeds)),
        fnk=_names(fnk) or (), fnk_backend=k_backend, fnk_n_init=k_n_init, fnk_n_runs=k_n_runs,
        fnk_threshold=k_threshold,
        massive_factor=massive_factor, allow_overlap=allow_overlap, ablations=_names(ablation) or [],
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
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="New folder for the pruned model.")
@model_options("The model to prune")
@click.option("--networks", "network_names", default=None, help="Networks to use [default: all].")
@click.option("--remove", is_flag=True,
              help="Remove the network neurons and keep the rest [default: keep only the network neurons].")
@click.option("--heldout", default="lee-test", show_default=True, help="Text for the perplexity comparison.")
@click.option("--n-docs", type=int, default=20, show_default=True)
@click.option("--max-doc-tokens", type=int, default=128, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@threads_option
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
              show_default=True)
def prune(networks, output, model, gguf_file, network_names, remove, heldout, n_docs, max_doc_tokens,
          overwrite, threads, device, dtype):
    """Save a smaller model without the MLP neurons outside NETWORKS (or, with --remove, inside).

    Reports parameters, file size, forward speed and perplexity of the unpruned, the masked
    (unpruned, other neurons zeroed) and the pruned model.
    """
    from llm2nifti.intervention.pruning import prune as run_prune

    res = run_prune(networks, output, model=model, gguf_file=gguf_file, networks_names=_names(network_names),
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
