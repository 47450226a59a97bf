"""``llm2nifti decompose``, ``llm2nifti networks`` and ``llm2nifti recurrence``."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main
from .options import (dataset_option, decomposition_options, former_name, min_stability_option,
                      option, output_option, participant_option, quiet_option, runs_option,
                      site_option, task_option, threads_option, threshold_option)


def _runs(value):
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter("give run numbers such as 1,2,3") from None


def _selection_options(f):
    f = site_option()(f)
    f = runs_option(f)
    f = task_option(all_tasks=True)(f)
    f = participant_option()(f)
    return f


def _selection_of_neurons(f):
    f = option("--top-k", type=int, default=None,
               help="Keep the k strongest neurons per network (with --threshold: among those "
                    "past it).")(f)
    f = option("--one-sided", is_flag=True, help="Keep z > t only [default: |z| > t].")(f)
    f = threshold_option(top_k=True)(f)
    return f


def _threshold(threshold, top_k):
    from llm2nifti.defaults import Z_THRESHOLD

    return threshold if threshold is not None or top_k is not None else Z_THRESHOLD


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_selection_options
@former_name("--alpha", "alpha", float)
@decomposition_options("decompose", keep=())
@option("--desc", default=None, help="BIDS desc label of the outputs [default: the method].")
@threads_option
@quiet_option
def decompose(dataset, participant, task, run, site, estimator, desc, threads, quiet):
    """Decompose the runs of DATASET into maps over neurons (a BIDS derivative).

    \b
    Writes under DATASET/derivatives/llm2nifti-<method>/sub-<label>/func/:
      *_desc-<desc>_components.nii         maps (volume i = component i)
      *_desc-<desc>_stat-z_components.nii  maps z-scored over neurons (threshold these)
      *_desc-<desc>_components.json        parameters, explained variance, timing
      *_desc-<desc>_stability.tsv          --n-runs N > 1: each component's stability (ICASSO Iq)
      *_desc-<desc>_estimates.tsv          --n-runs N > 1: the N x k estimates and their clusters
    """
    from llm2nifti.analysis.decomposition import base_decomposition
    from llm2nifti.analysis.decomposition import decompose as run_decompose

    res = run_decompose(dataset, estimator, participant=participant, task=task, run=_runs(run),
                        site=site, desc=desc, threads=threads)
    est = res.estimator
    one = base_decomposition(est)
    click.echo(f"{one.method} ({one.backend}): {one.n_components} components from {est.n_runs_} run(s), "
               f"{est.n_tokens_} tokens in {est.fit_seconds_:.1f} s; explained variance "
               f"{res.explained_variance_total:.3f}")
    if est.stability_ is None:
        click.echo("  one decomposition: whether each map recurs is not known (--n-runs 10 tells)")
    else:
        iq = est.stability_["stability"]
        click.echo(f"  stability over {est.n_repeats} decompositions: median {iq.median():.2f}, "
                   f"{int((iq >= 0.8).sum())} of {len(iq)} components at 0.8 or more")
    click.echo(f"  maps:   {res.components}")
    click.echo(f"  z-maps: {res.zmaps}")
    click.echo(f"  next:   llm2nifti networks {res.zmaps} --dataset {dataset}")


@main.command()
@click.argument("components", type=click.Path(path_type=Path))
@dataset_option("the scan the components were made from (gives the neuron layout)")
@participant_option("from the image's name")
@site_option("the image's acq entity, else the only one")
@_selection_of_neurons
@output_option("DATASET/derivatives/llm2nifti-networks")
@min_stability_option()
def networks(components, dataset, participant, site, threshold, one_sided, top_k, output,
             min_stability):
    """Map the maps of COMPONENTS (a 4D image on DATASET's grid) back to exact neurons.

    \b
    Writes (network FNxx = volume xx of COMPONENTS):
      <stem>_networks.tsv    network, site, layer, neuron, z
      <stem>_summary.tsv     size, share, signs, peak, count per layer
      <stem>_keyneurons.tsv  the union, with how many networks hold each neuron
    """
    from llm2nifti.analysis.selection import networks as run_networks

    res = run_networks(components, dataset, participant=participant, site=site,
                       threshold=_threshold(threshold, top_k), two_sided=not one_sided,
                       top_k=top_k, output=output, min_stability=min_stability)
    sizes = res.summary["size"]
    click.echo(f"{len(sizes)} networks, {int(sizes.min())}-{int(sizes.max())} neurons each; "
               f"{len(res.key)} key neurons")
    if "stability" in res.summary:
        iq = res.summary["stability"]
        click.echo(f"  stability {iq.min():.2f}-{iq.max():.2f}"
                   + (f" (kept at {min_stability} or more)" if min_stability is not None else ""))
    else:
        click.echo("  the maps rest on one decomposition: whether each network recurs is not known "
                   "(decompose --n-runs 10)")
    click.echo(f"  networks: {res.networks_tsv}")
    click.echo(f"  summary:  {res.summary_tsv}")
    click.echo(f"  key:      {res.key_tsv}")


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_selection_options
@option("--templates", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="Components image to use as templates [default: decompose all selected runs].")
@decomposition_options("recurrence", keep=())
@option("--n-seeds", type=int, default=3, show_default=True,
        help="Extra group decompositions with other seeds (stability).")
@_selection_of_neurons
@option("--iou-threshold", type=float, default=0.2, show_default=True,
        help="A matched IoU above it counts as recurring.")
@output_option("DATASET/derivatives/llm2nifti-recurrence")
@option("--no-figures", is_flag=True, help="Skip the PNG figures.")
@threads_option
@quiet_option
def recurrence(dataset, participant, task, run, site, templates, estimator, n_seeds, threshold,
               one_sided, top_k, iou_threshold, output, no_figures, threads, quiet):
    """Decompose each run of DATASET alone and tell how often the group's networks recur.

    Networks are matched to the templates one to one by the IoU of their neuron sets; writes a
    TSV per (run or seed, template), a summary per template, and figures (runs x templates heat
    map, network sizes per layer).
    """
    from llm2nifti.analysis.matching import recurrence as run_recurrence

    res = run_recurrence(dataset, estimator, participant=participant, task=task, run=_runs(run),
                         site=site, templates=templates, n_seeds=n_seeds,
                         threshold=_threshold(threshold, top_k), two_sided=not one_sided,
                         top_k=top_k, iou_threshold=iou_threshold, threads=threads,
                         output=output, figures=not no_figures)
    s = res.summary
    n_bold = int((res.table["kind"] == "run").sum() / max(len(s), 1))
    click.echo(f"{len(s)} templates over {n_bold} run(s): mean recurrence {s['recurrence'].mean():.2f}, "
               f"{int((s['recurrence'] >= 0.5).sum())} recur in at least half of the runs")
    if "stability" in s:
        click.echo(f"  template stability: median {s['stability'].median():.2f}, "
                   f"{int((s['stability'] >= 0.8).sum())} at 0.8 or more")
    else:
        click.echo("  the templates rest on one decomposition (--n-runs 10 gives their stability)")
    if res.left_out:
        click.echo("  left out: " + ", ".join(f"{r['unit']} ({r['tokens']} token)" for r in res.left_out)
                   + ": too short to decompose alone")
    for key, path in res.paths.items():
        click.echo(f"  {key + ':':9s} {path}")
