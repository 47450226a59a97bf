"""``llm2nifti decompose``, ``llm2nifti networks`` and ``llm2nifti recurrence``."""

from __future__ import annotations

from pathlib import Path

import click

from .group import PARTICIPANT, main, quiet_option, threads_option


def _runs(value):
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter("give run numbers such as 1,2,3") from None


def _selection_options(f):
    f = click.option("--site", default=None,
                     help="Neuron site (acq entity) [default: the only one in the runs].")(f)
    f = click.option("--runs", "run", default=None, help="Run numbers, e.g. 1,2 [default: all].")(f)
    f = click.option("--task", default=None,
                     help="BIDS task label [default: the only one]; 'all': every task together.")(f)
    f = click.option("--participant", type=PARTICIPANT, default=None,
                     help="BIDS participant label [default: the only one].")(f)
    return f


def _decomposition_options(f):
    f = quiet_option(f)
    f = click.option("--workers", type=int, default=2, show_default=True,
                     help="Worker processes of --scheduler processes.")(f)
    f = click.option("--scheduler", default="threads", show_default=True,
                     help="Where the fast backend's per-run work runs: threads (this process), "
                          "processes (a local Dask cluster of --workers), or the address of a "
                          "running Dask scheduler (tcp://host:8786).")(f)
    f = threads_option(f)
    f = click.option("--device", default="cpu", show_default=True,
                     help="torch device of the fast backend (cpu, cuda).")(f)
    f = click.option("--n-jobs", type=int, default=1, show_default=True, help="nilearn parallel jobs.")(f)
    f = click.option("--random-state", type=int, default=0, show_default=True,
                     help="Seed: the same seed gives identical output.")(f)
    f = click.option("--n-init", type=int, default=None,
                     help="FastICA restarts (CanICA); the sparsest result is kept [default: 10; "
                          "1 for each decomposition of --n-runs].")(f)
    f = click.option("--n-components", "-k", type=int, default=20, show_default=True,
                     help="Number of components (networks).")(f)
    return f


def _selection_of_neurons(f):
    f = click.option("--top-k", type=int, default=None,
                     help="Keep the k strongest neurons per network (with --threshold: among those past it).")(f)
    f = click.option("--one-sided", is_flag=True, help="Keep z > t only [default: |z| > t].")(f)
    f = click.option("--threshold", "-t", type=float, default=None,
                     help="z threshold [default: 3.6, or none with --top-k].")(f)
    return f


def _threshold(threshold, top_k):
    return threshold if threshold is not None or top_k is not None else 3.6


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_selection_options
@click.option("--method", type=click.Choice(["canica", "dictlearning"]), default="canica",
              show_default=True, help="nilearn estimator.")
@click.option("--backend", type=click.Choice(["nilearn", "fast"]), default="nilearn", show_default=True,
              help="fast: the same CanICA algorithm in torch (CPU or GPU).")
@_decomposition_options
@click.option("--alpha", type=float, default=10.0, show_default=True, help="DictLearning sparsity.")
@click.option("--desc", default=None, help="BIDS desc label of the outputs [default: the method].")
@click.option("--n-runs", type=int, default=1, show_default=True,
              help="Decompose N times (seeds from --random-state) and keep the components that "
                   "recur (ICASSO): each gets a stability index.")
@click.option("--bootstrap", is_flag=True,
              help="With --n-runs: each decomposition after the first reads a resample of the runs.")
def decompose(dataset, participant, task, run, site, method, backend, n_components, n_init,
              random_state, n_jobs, device, threads, scheduler, workers, quiet, alpha, desc,
              n_runs, bootstrap):
    """Decompose the runs of DATASET into maps over neurons (a BIDS derivative).

    \b
    Writes under DATASET/derivatives/llm2nifti-<method>/sub-<label>/func/:
      *_desc-<desc>_components.nii         maps (volume i = component i)
      *_desc-<desc>_stat-z_components.nii  maps z-scored over neurons (threshold these)
      *_desc-<desc>_components.json        parameters, explained variance, timing
      *_desc-<desc>_stability.tsv          --n-runs N > 1: each component's stability (ICASSO Iq)
      *_desc-<desc>_estimates.tsv          --n-runs N > 1: the N x k estimates and their clusters
    """
    from llm2nifti.analysis.decomposition import decompose as run_decompose

    res = run_decompose(dataset, participant=participant, task=task, run=_runs(run), site=site,
                        method=method, backend=backend, n_components=n_components, n_init=n_init,
                        random_state=random_state, n_jobs=n_jobs, device=device, alpha=alpha,
                        desc=desc, threads=threads, scheduler=scheduler, workers=workers,
                        progress=not quiet, n_runs=n_runs, bootstrap=bootstrap)
    est = res.estimator
    click.echo(f"{method} ({backend}): {n_components} components from {est.n_runs_} run(s), "
               f"{est.n_tokens_} tokens in {est.fit_seconds_:.1f} s; explained variance "
               f"{res.explained_variance_total:.3f}")
    if est.stability_ is None:
        click.echo("  one decomposition: whether each map recurs is not known (--n-runs 10 tells)")
    else:
        iq = est.stability_["stability"]
        click.echo(f"  stability over {n_runs} decompositions: median {iq.median():.2f}, "
                   f"{int((iq >= 0.8).sum())} of {len(iq)} components at 0.8 or more")
    click.echo(f"  maps:   {res.components}")
    click.echo(f"  z-maps: {res.zmaps}")
    click.echo(f"  next:   llm2nifti networks {res.zmaps} --dataset {dataset}")


@main.command()
@click.argument("components", type=click.Path(path_type=Path))
@click.option("--dataset", "-d", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The dataset the components were made from (gives the neuron layout).")
@click.option("--participant", type=PARTICIPANT, default=None, help="Participant label [default: from the image's name].")
@click.option("--site", default=None,
              help="Neuron site [default: the image's acq entity, else the only one].")
@_selection_of_neurons
@click.option("--output", "-o", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the tables [default: DATASET/derivatives/llm2nifti-networks].")
@click.option("--min-stability", type=float, default=None,
              help="Keep the networks whose stability (decompose --n-runs) is at least this, e.g. 0.8.")
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
@click.option("--templates", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Components image to use as templates [default: decompose all selected runs].")
@click.option("--method", type=click.Choice(["canica", "dictlearning"]), default="canica", show_default=True)
@click.option("--backend", type=click.Choice(["nilearn", "fast"]), default="fast", show_default=True,
              help="Decomposition backend (many decompositions: fast by default).")
@_decomposition_options
@click.option("--n-seeds", type=int, default=3, show_default=True,
              help="Extra group decompositions with other seeds (stability).")
@_selection_of_neurons
@click.option("--iou-threshold", type=float, default=0.2, show_default=True,
              help="A matched IoU above it counts as recurring.")
@click.option("--output", "-o", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of tables and figures [default: DATASET/derivatives/llm2nifti-recurrence].")
@click.option("--no-figures", is_flag=True, help="Skip the PNG figures.")
@click.option("--n-runs", type=int, default=1, show_default=True,
              help="Decompose the templates N times and keep the components that recur (ICASSO).")
def recurrence(dataset, participant, task, run, site, templates, method, backend, n_components,
               n_init, random_state, n_jobs, device, threads, scheduler, workers, quiet, n_seeds,
               threshold, one_sided, top_k, iou_threshold, output, no_figures, n_runs):
    """Decompose each run of DATASET alone and tell how often the group's networks recur.

    Networks are matched to the templates one to one by the IoU of their neuron sets; writes a
    TSV per (run or seed, template), a summary per template, and figures (runs x templates heat
    map, network sizes per layer).
    """
    from llm2nifti.analysis.matching import recurrence as run_recurrence

    res = run_recurrence(dataset, participant=participant, task=task, run=_runs(run), site=site,
                         templates=templates, method=method, backend=backend,
                         n_components=n_components, n_init=n_init, random_state=random_state,
                         n_seeds=n_seeds, threshold=_threshold(threshold, top_k),
                         two_sided=not one_sided, top_k=top_k, iou_threshold=iou_threshold,
                         device=device, n_jobs=n_jobs, threads=threads, output=output,
                         figures=not no_figures, scheduler=scheduler, workers=workers,
                         progress=not quiet, n_runs=n_runs)
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
