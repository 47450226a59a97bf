"""``llm2nifti localize`` (GLM localizer) and ``llm2nifti connectivity``."""

from __future__ import annotations

from pathlib import Path

import click

from .convert import _model_options
from .main import main, model_options


@main.command()
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@model_options("The model to record the localizer with, when DATASET lacks it")
@click.option("--stimuli", default="localizer", show_default=True,
              help="'localizer' (built in: sentences, shuffled words and nonwords made from the "
                   "Lee corpus) or a .tsv/.jsonl table with id, text and condition columns.")
@click.option("--contrast", "-c", "contrasts", multiple=True,
              help="Contrast over the conditions, e.g. 'sentences - nonwords' (repeatable) "
                   "[default: sentences - nonwords].")
@click.option("--top", "top_percent", type=float, default=1.0, show_default=True,
              help="Keep the top PERCENT of units by t (the paper's 1%).")
@click.option("--z-threshold", type=float, default=None,
              help="Instead, keep units with z above this (e.g. 3.1).")
@click.option("--task", default=None, help="BIDS task label [default: localizer, or the table's name].")
@click.option("--participant", "--label", "participant", default=None,
              help="BIDS participant label [default: from the model's name, or the only one].")
@click.option("--neurons", "site", type=click.Choice(["mlp", "mlp-out", "attn", "residual"]),
              default="mlp", show_default=True, help="Unit site.")
@click.option("--run-tokens", type=int, default=None,
              help="Tokens per run when recording [default: 1024 or the context window]; runs end "
                   "between items.")
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: available cores].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@_model_options
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
