"""``llm2nifti words`` and ``llm2nifti fingerprint``: several models on one word axis."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main
from .options import (PARTICIPANT, candidate_option, decomposition_options, former_name,
                      min_stability_option, model_options, n_permutations_option, option,
                      output_option, overwrite_option, participant_option, quiet_option,
                      reference_option, site_option, task_option, text_option, threads_option,
                      threshold_option)


def _who(f):
    f = site_option()(f)
    f = task_option()(f)
    f = option("--pool", type=click.Choice(["mean", "last"]), default="mean", show_default=True,
                     help="A word's value: the mean over its tokens, or its last token.")(f)
    return f


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@participant_option()
@_who
@output_option("DATASET/derivatives/llm2nifti-words")
@quiet_option
def words(dataset, participant, site, task, pool, output, quiet):
    """Write word-level runs: each volume is one word (its tokens pooled), so that models with
    different tokenizers share one time axis. The output is a dataset nilearn and
    `llm2nifti decompose` read as they read the scan.
    """
    from llm2nifti.acquisition import words_dataset as write_words

    paths = write_words(dataset, participant=participant, task=task, site=site, pool=pool,
                        output=output, progress=not quiet)
    for p in paths:
        click.echo(f"Wrote {p}")


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@reference_option()
@candidate_option("a model whose lineage is asked about", multiple=True)
@option("--independent", "-i", "independent", type=PARTICIPANT, multiple=True,
        help="Participant known to be unrelated to the reference (repeatable).")
@option("--random-copies", type=int, default=0, show_default=True,
        help="Scan this many randomly initialised copies of the reference's architecture "
             "and use them as independent models.")
@_who
@option("--networks-tsv", "networks", multiple=True, metavar="PARTICIPANT=TSV",
        help="A participant's networks.tsv instead of its CanICA maps (repeatable).")
@n_permutations_option("shuffles of the word order behind the stimulus null")
@decomposition_options("fingerprint", without=("method", "alpha"))
@threshold_option()
@min_stability_option(choices=True)
@option("--no-rsa", is_flag=True, help="Skip the layer x layer RSA and CKA.")
@threads_option
@output_option("DATASET/derivatives/llm2nifti-fingerprint")
@quiet_option
@former_name("--networks", "networks", multiple=True)
def fingerprint(dataset, reference, candidates, independent, random_copies, site, task, pool,
          networks, n_permutations, estimator, random_state, threshold, min_stability,
          no_rsa, threads, output, quiet):
    """Functional-network fingerprints: is each candidate's network structure the reference's,
    beyond what reading the same text gives (stimulus null), and closer than independent
    models (lineage)? Also inter-model correlation (3+ models) and layer x layer RSA.
    """
    from llm2nifti.analysis import fingerprint as run

    tables = {}
    for item in networks:
        who, sep, path = item.partition("=")
        if not sep or not who or not path:
            raise click.BadParameter(f"{item!r}: give PARTICIPANT=path/to/networks.tsv",
                               param_hint="--networks-tsv")
        tables[who] = Path(path)
    if min_stability not in ("auto", "all"):
        try:
            min_stability = float(min_stability)
        except ValueError:
            raise click.BadParameter(f"{min_stability!r}: give a number, auto or all",
                                     param_hint="--min-stability") from None
    res = run(dataset, reference, candidates, independent=independent, n_random=random_copies,
              task=task, site=site, pool=pool, n_permutations=n_permutations,
        threshold=threshold, estimator=estimator, random_state=random_state,
              rsa=not no_rsa, networks=tables, output=output, threads=threads,
        progress=not quiet,
              min_stability=None if min_stability == "all" else min_stability)
    for r in res.summary.itertuples():
        click.echo(f"sub-{r.participant} ({r.role}): score {r.score:.3f} (null mean "
                   f"{r.null_mean:.3f}, 95th {r.null_95:.3f}; p = {r.p:.3g}; {r.n_above}/"
                   f"{r.n_matched} pairs > 0.5) -> {r.verdict}")
    if res.min_stability is not None:
        kept = len(next(iter(res.matrices.values()))["spearman"])
        click.echo(f"  compared the {kept} networks of sub-{reference} with a stability of "
                   f"{res.min_stability:g} or more; --min-stability all compares every one")
    elif min_stability == "auto" and res.reference_decompositions not in (1, "networks.tsv"):
        click.echo(f"  no network of sub-{reference} has a stability of 0.9 or more: every one "
                   "compared, and none recurs that well")
    single = [p for p, n in [(reference, res.reference_decompositions),
                             *zip(res.summary["participant"], res.summary["decompositions"])] if n == 1]
    if single:
        click.echo(f"  networks of {', '.join(f'sub-{p}' for p in single)} rest on one decomposition "
                   "(--n-runs 1): they move with its seed; --n-runs 50 makes them stable")
    click.echo(f"Wrote {res.paths['summary']}")


@main.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@option("--kind", type=click.Choice(["permuted", "finetuned", "random", "amplified",
                                     "quantized", "pruned"]), required=True,
        help="permuted: MLP neurons reordered (same function); finetuned: a short "
             "fine-tune on --text; random: same architecture, random weights; amplified: "
             "--neurons MLP units of --layer multiplied by --factor through the weights; "
             "quantized: weights rounded to --bits; pruned: --fraction of the smallest "
             "weights set to 0.")
@model_options("derived from")
@option("--seed", type=int, default=0, show_default=True,
        help="Seed of the permutation, the fine-tuning, the random weights or the units drawn.")
@text_option("finetuned: the fine-tuning text", default="pang-lee")
@option("--steps", type=int, default=300, show_default=True, help="Fine-tuning steps.")
@option("--lr", type=float, default=5e-5, show_default=True, help="Fine-tuning learning rate.")
@option("--layer", type=int, default=None,
        help="amplified: the layer [default: the middle layer of the MLP site].")
@option("--neurons", "n_neurons", type=int, default=64, show_default=True,
        help="amplified: how many MLP units (drawn with --seed).")
@option("--factor", type=float, default=2.0, show_default=True,
        help="amplified: the factor (2 scales exactly in floating point).")
@option("--fraction", type=float, default=0.3, show_default=True,
        help="pruned: share of each linear layer's weights set to 0 (smallest first).")
@option("--bits", type=click.IntRange(2, 8), default=4, show_default=True,
        help="quantized: bits per weight.")
@threads_option
@overwrite_option("OUTPUT if it exists")
@quiet_option
def derive(output, kind, model, gguf_file, seed, text, steps, lr, layer, n_neurons, factor,
           fraction, bits, threads, overwrite, quiet):
    """Save a variant of a model whose lineage is known (for `fingerprint` and `diff`): a
    unit-permuted, fine-tuned, randomly initialised, unit-amplified, 4-bit-rounded or
    magnitude-pruned copy. Copies with units removed: `llm2nifti prune`.
    """
    from llm2nifti.intervention import derive as make

    path = make(output, kind, model=model, gguf_file=gguf_file, seed=seed, text=text,
                steps=steps, lr=lr, threads=threads, overwrite=overwrite, progress=not quiet,
                layer=layer, n_neurons=n_neurons, factor=factor, fraction=fraction, bits=bits)
    click.echo(f"Wrote {path}")
