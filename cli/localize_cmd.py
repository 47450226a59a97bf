"""``llm2nifti localize`` (GLM localizer) and ``llm2nifti connectivity``."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main
from .options import (CommaList, dataset_option, device_options, former_name, model_options, option,
                      output_option, participant_option, quiet_option, run_tokens_option,
                      site_option, task_option, threads_option, threshold_option, top_percent_option)


@main.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@model_options("recording the localizer when DATASET lacks it")
@option("--stimuli", default="localizer", show_default=True,
        help="'localizer' (built in: sentences, shuffled words and nonwords made from the "
             "Lee corpus) or a .tsv/.jsonl table with id, text and condition columns.")
@option("--contrast", "-c", "contrasts", multiple=True,
        help="Contrast over the conditions, e.g. 'sentences - nonwords' (repeatable) "
             "[default: sentences - nonwords].")
@top_percent_option("by t")
@option("--z-threshold", type=float, default=None,
        help="Instead, keep units with z above this (e.g. 3.1).")
@task_option("localizer, or the table's name")
@participant_option("from the model's name, or the only one")
@site_option("the only one of the task's runs; mlp when recording",
             choices=("mlp", "mlp-out", "attn", "residual"))
@run_tokens_option(" when recording; runs end between items")
@threads_option
@quiet_option
@device_options()
@former_name("--neurons", "site", click.Choice(["mlp", "mlp-out", "attn", "residual"]))
@former_name("--label", "participant")
def localize(dataset, model, gguf_file, stimuli, contrasts, top_percent, z_threshold, task,
             participant, site, run_tokens, threads, quiet, device, dtype, trust_remote_code):
    """GLM localizer: units whose activation differs between conditions (nilearn FirstLevelModel).

    Records the localizer into DATASET when it is not there yet (one item per document,
    opened by BOS; trial_type per token in events.tsv), fits a first-level GLM per unit
    (no HRF, no drift, OLS), writes t/z/effect maps as a BIDS statistical derivative and
    the top units as a networks.tsv that `evaluate` and `prune` read.
    """
    from llm2nifti.analysis import localize as run_localize

    res = run_localize(dataset, model=model, gguf_file=gguf_file, stimuli=stimuli,
                       contrasts=contrasts or ("sentences - nonwords",), top_percent=top_percent,
                       z_threshold=z_threshold, task=task, participant=participant, site=site,
                       run_tokens=run_tokens, threads=threads, progress=not quiet, device=device,
                       dtype=dtype, trust_remote_code=trust_remote_code)
    first = next(iter(res.contrasts.values()))
    click.echo(f"Fitted {len(res.glm.design_matrices_)} run(s), conditions "
               f"{', '.join(res.conditions)}" + ("; recorded the localizer first" if res.scanned else ""))
    for expression, entry in res.contrasts.items():
        click.echo(f"  {expression}: max t {entry['t'].max():.2f}, {entry['n_selected']} units "
                   f"selected -> {entry['networks_tsv']}")
    click.echo(f"  maps: {first['t_path'].parent}/")
    click.echo(f"  nilearn: first_level_from_bids({str(dataset)!r}, {first['t_path'].name.split('task-')[1].split('_')[0]!r}, "
               "space_label='neurons', derivatives_folder='derivatives/llm2nifti-space', ...)")


_MEASURES = CommaList(replace={"partial-correlation": "partial correlation"})


@main.command()
@click.argument("components", type=click.Path(dir_okay=False, path_type=Path))
@dataset_option("the scan COMPONENTS was decomposed from")
@option("--measure", "kinds", type=_MEASURES,
        default="correlation", show_default=True,
        help="Connectivity measures (nilearn's kind), comma-separated: correlation, "
             "partial-correlation, tangent.")
@option("--signals", type=click.Choice(["maps", "mean"]), default="maps", show_default=True,
        help="maps: nilearn's NiftiMapsMasker on the components; mean: mean of each "
             "thresholded network's units, signed by z.")
@option("--estimator", type=click.Choice(["ledoit-wolf", "empirical"]), default="ledoit-wolf",
        show_default=True, help="Covariance estimator (nilearn's default is Ledoit-Wolf).")
@threshold_option()
@participant_option("from the image's name, or the only one")
@task_option("every task of the runs")
@site_option("the image's acq entity, else the only one")
@option("--compare", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="A second components image: compare the connectomes after IoU matching.")
@option("--compare-dataset", type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=None, help="Dataset of --compare [default: DATASET].")
@option("--compare-task", default=None, help="Task of --compare's runs [default: --task].")
@option("--min-iou", type=float, default=0.1, show_default=True,
        help="Matched pairs below this IoU are left out of the comparison.")
@output_option("DATASET/derivatives/llm2nifti-connectivity")
@quiet_option
@former_name("--kind", "kinds", _MEASURES)
def connectivity(components, dataset, kinds, signals, estimator, threshold, participant, task,
                 site, compare, compare_dataset, compare_task, min_iou, output, quiet):
    """Connectomes between the networks of COMPONENTS over DATASET's runs (nilearn).

    Network time courses per run, ConnectivityMeasure across runs, a matrix figure with
    networks ordered by depth; with --compare, the similarity of two connectomes after
    matching their networks by IoU, against random matchings.
    """
    from llm2nifti.analysis import connectivity as run_connectivity

    res = run_connectivity(components, dataset, participant=participant, task=task, site=site,
                           kinds=list(kinds), signals=signals, estimator=estimator,
                           threshold=threshold, output=output, compare=compare,
                           compare_dataset=compare_dataset, compare_task=compare_task,
                           min_iou=min_iou, progress=not quiet)
    click.echo(f"{len(res.names)} networks over {len(res.time_series)} run(s)")
    if res.left_out:
        click.echo("  left out: " + ", ".join(f"{r['run']} ({r['tokens']} tokens)" for r in res.left_out)
                   + ": a network's time course is constant there")
    for kind, paths in ((k, v) for k, v in res.paths.items() if isinstance(v, dict)):
        click.echo(f"  {kind}: {paths['tsv']} (+ .png)")
    if res.comparison is not None:
        c = res.comparison
        click.echo(f"  compared: {c['n_matched']} networks matched (IoU >= {c['min_iou']}), "
                   f"mean IoU {c['pairs']['iou'].mean():.2f}")
        for kind in res.connectomes:
            s = c[kind]
            click.echo(f"    {kind}: r = {s['r']:.3f} over {s['n_edges']} edges; random matchings "
                       f"{s['null_low']:.3f} to {s['null_high']:.3f} (p = {s['p']:.3g})")
        click.echo(f"  {res.paths['comparison']}")
