"""``llm2nifti diff`` and ``llm2nifti patch``: what changed between two checkpoints, and
whether the changed units carry the change."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main
from .options import (candidate_option, dataset_option, decomposition_options, fwe_alpha_option,
                      max_doc_tokens_option, n_docs_option, n_permutations_option, option,
                      output_option, quiet_option, reference_option, seeds_option, site_option,
                      task_option, text_option, threads_option)


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@reference_option("the base model")
@candidate_option("the variant")
@site_option()
@task_option()
@decomposition_options("diff", without=("method", "alpha"))
@n_permutations_option("sign flips of whole documents behind every FWE-corrected p")
@fwe_alpha_option("the units written to units.tsv")
@threads_option
@output_option("DATASET/derivatives/llm2nifti-diff")
@quiet_option
def diff(dataset, reference, candidate, site, task, estimator, random_state, n_permutations,
         alpha, threads, output, quiet):
    """Compare two checkpoints of one model that read the same text: per unit, a paired test
    of the mean and of the amplitude over documents (FWE by permutation); per group network
    (dual regression), its shape and amplitude change.

    \b
    Writes under derivatives/llm2nifti-diff/sub-<candidate>/func/:
      *_contrast-<test>Vs<ref>_stat-{t,pfwe,effect}_statmap.nii   per unit (mean, amplitude)
      *_contrast-shapeVs<ref>_stat-{t,pfwe}_statmap.nii          per network (4D)
      *_desc-vs<ref>_units.tsv      the units past FWE (read by evaluate, prune, patch)
      *_desc-vs<ref>_networks.tsv   per network: amplitude ratio [95% CI], shape changes
      *_desc-vs<ref>_layers.tsv/.png  per layer: units changed
    """
    from llm2nifti.analysis import diff as run

    res = run(dataset, reference, candidate, task=task, site=site, estimator=estimator,
              n_permutations=n_permutations, alpha=alpha, random_state=random_state,
              threads=threads, progress=not quiet, output=output)
    n_units = res.layout.n_neurons
    click.echo(f"sub-{candidate} vs sub-{reference} ({res.site}, {len(res.documents)} documents, "
               f"{n_permutations} sign flips):")
    for test, r in res.units.items():
        passed = r.p_fwe <= alpha
        layers = res.layers[(res.layers["test"] == test) & (res.layers["n_changed"] > 0)]["layer"]
        first = f"; first changed layer {int(layers.min())}" if len(layers) else ""
        click.echo(f"  {test}: {int(passed.sum()):,} of {n_units:,} units past FWE {alpha:g} "
                   f"(|t| > {r.threshold(alpha):.2f}){first}")
    nets = res.networks
    amp = nets[nets["amplitude_p_fwe"] <= alpha]["network"].tolist()
    shape = nets[nets["shape_n_changed"] > 0]["network"].tolist()
    click.echo(f"  networks ({len(nets)}): amplitude changed in {len(amp)} "
               f"({', '.join(amp) or 'none'}); shape changed in {len(shape)}")
    if res.group.stability_ is None:
        click.echo("  the group networks rest on one decomposition (--n-runs 10 tells how stable)")
    click.echo(f"Wrote {res.paths['units']}")
    click.echo(f"Wrote {res.paths['networks']}")
    click.echo(f"Wrote {res.paths['figure']}")


@main.command()
@click.argument("units", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@dataset_option("the scan both participants were converted into")
@reference_option("the base model")
@candidate_option("the variant")
@option("--test", type=click.Choice(["mean", "amplitude"]), default=None,
        help="Only the units of this test [default: all units of the table].")
@text_option("scored", multiple=True,
             default_text="the variant's training text when variant.json names one, and lee-test")
@n_docs_option(20, ": each text's first documents")
@max_doc_tokens_option(64, ": a patched forward pass per document and control")
@seeds_option
@threads_option
@output_option("beside UNITS")
def patch(units, dataset, reference, candidate, test, texts, n_docs, max_doc_tokens, seeds,
          threads, output):
    """Run the variant with UNITS (diff's units.tsv) set to the base's values on the same
    tokens, and report how much of its perplexity gap to the base closes, against random
    units of the same count per layer.
    """
    from llm2nifti.intervention import patch_gap

    res = patch_gap(units, dataset, reference, candidate, test=test, texts=texts, n_docs=n_docs,
                    max_doc_tokens=max_doc_tokens, seeds=seeds, threads=threads, output=output)
    for line in res.verdicts:
        click.echo(line)
    click.echo(f"Wrote {res.paths['table']}")
