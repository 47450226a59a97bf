"""``llm2nifti report``."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main
from .options import option, output_option, participant_option


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@participant_option("every one")
@option("--evaluation", "evaluations", multiple=True,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="An output folder of `llm2nifti evaluate` to include (repeatable).")
@option("--encode-output", "encodings", multiple=True,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="An output folder of `llm2nifti encode` to include (repeatable): it lives in the "
             "human dataset, FMRI/derivatives/llm2nifti-encoding.")
@output_option("DATASET/derivatives/llm2nifti-report")
def report(dataset, participant, evaluations, encodings, output):
    """One self-contained HTML page per participant: dataset, networks, recurrence, localizer,
    connectivity and interventions, each from what the other commands wrote.
    """
    from llm2nifti.report import report as write_report

    for page in write_report(dataset, participant=participant, output=output,
                             evaluations=evaluations, encodings=encodings):
        click.echo(f"Wrote {page}")
