"""``llm2nifti report``."""

from __future__ import annotations

from pathlib import Path

import click

from .group import PARTICIPANT, main


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--participant", type=PARTICIPANT, default=None, help="One participant [default: every one].")
@click.option("--evaluation", "evaluations", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="An output folder of `llm2nifti evaluate` to include (repeatable).")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the pages [default: DATASET/derivatives/llm2nifti-report].")
def report(dataset, participant, evaluations, output):
    """One self-contained HTML page per participant: dataset, networks, recurrence, localizer,
    connectivity and interventions, each from what the other commands wrote.
    """
    from llm2nifti.report import report as write_report

    for page in write_report(dataset, participant=participant, output=output,
                             evaluations=evaluations):
        click.echo(f"Wrote {page}")
