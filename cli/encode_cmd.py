"""``llm2nifti encode``: a model's networks predicting the fMRI of people who heard the story."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main
from .options import (PARTICIPANT, CommaList, device_option, fwe_alpha_option,
                      n_permutations_option, option, output_option, participant_option,
                      quiet_option, random_state_option, site_option, task_option, threads_option,
                      scheduler_options, top_percent_option, word_column_option)


@main.command()
@click.argument("scan", type=click.Path(exists=True, file_okay=False, path_type=Path))
@option("--fmri", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="The human BIDS dataset: raw events files and fMRIPrep's derivatives.")
@option("--features", "networks", type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None, help="The networks.tsv whose networks are the features [default: the "
                           "scan's only one].")
@option("--layer-pcs", type=int, default=0, show_default=True,
        help="Each layer's first N principal components (of its units' word series) as the "
             "features instead of the networks: the best-feature map is then the best-layer "
             "map (0: the networks).")
@option("--units", is_flag=True,
        help="Every unit of the scan as a feature (kernel ridge), one feature per layer for the "
             "best-layer map; --region then ranks the units by their own weights.")
@participant_option("the scan's only one")
@task_option()
@site_option()
@word_column_option
@option("--fmri-participant", "fmri_participants", type=PARTICIPANT, multiple=True,
        help="A human participant (repeatable) [default: every one with runs of the task].")
@option("--space", default=None, help="fMRIPrep's output space [default: the only one].")
@option("--confounds", type=CommaList(), default="",
        help="Columns of fMRIPrep's confounds table regressed out, e.g. trans_x,trans_y,trans_z.")
@option("--hrf", type=click.Choice(["glover", "spm", "fir"]), default="glover", show_default=True,
        help="nilearn's HRF the word features are convolved with; fir: the features resampled "
             "to the volumes (Lanczos) at each of --delays, so that the ridge learns each "
             "voxel's response shape.")
@option("--delays", type=CommaList(int), default="1,2,3,4", show_default=True,
        help="--hrf fir: the delays, in volumes.")
@option("--banded", type=int, default=0, show_default=True,
        help="Banded ridge with one band per feature (network or layer), N random-search "
             "iterations (0: one penalty per voxel): each feature's unique variance is written "
             "as a map and decides the feature each voxel rests on.")
@option("--trim", type=float, default=10.0, show_default=True,
        help="Seconds left out at each end of each run.")
@n_permutations_option("circular shifts of every run's features, every fold refitted (FWE "
                       "over voxels; with --banded or --units, of the held-out predictions, "
                       "anti-conservative)")
@option("--min-shift", type=float, default=20.0, show_default=True,
        help="Shortest circular shift of the null, in seconds (longer than the HRF).")
@fwe_alpha_option("the voxels the maps' labels and the tables count")
@option("--region", "regions", multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A mask in the human data's space (repeatable): the units whose weights carry its "
             "prediction are written as a networks.tsv that `evaluate` reads.")
@top_percent_option("per --region, by their weight in the region's mean prediction")
@option("--atlas", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
        help="A labels image in the human data's space: a table per participant of each "
             "region's voxels past FWE, r and best feature (*_regions.tsv).")
@option("--atlas-labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None, help="The atlas's dseg.tsv (index, name) naming its regions.")
@option("--float32", is_flag=True,
        help="Fit in single precision (himalaya's torch backend): half the memory, and faster.")
@random_state_option
@device_option(" of the ridge regressions (himalaya's numpy or torch CUDA backend)",
               choices=("cpu", "cuda"))
@threads_option
@scheduler_options("the work on each chunk of voxels (its fits and its null)")
@output_option("FMRI/derivatives/llm2nifti-encoding")
@quiet_option
def encode(scan, fmri, networks, layer_pcs, units, participant, task, site, word_column,
           fmri_participants, space, confounds, hrf, delays, banded, trim, n_permutations,
           min_shift, alpha, regions, top_percent, atlas, atlas_labels, float32, random_state,
           device, threads, scheduler, workers, output, quiet):
    """Encoding models: the scan's networks (or layers, or units: word series at the words'
    onsets, convolved with an HRF) predict each voxel of each participant who heard the story
    (ridge, one penalty per voxel, leave one run out); held-out r, R^2, FWE p from circular
    shifts of the features (every fold refitted), and the feature each voxel's prediction
    rests on most (a network, or word rate and word length, the nuisance features).

    \b
    SCAN was converted with --words on the story's events files. Writes under
    FMRI/derivatives/llm2nifti-encoding/sub-<label>/func/ (desc: networks, layers or units):
      *_space-<s>_desc-networks_stat-{r,r2,pfwe,depth}_statmap.nii.gz
      *_space-<s>_desc-networks_stat-isc_statmap.nii.gz  noise ceiling (others heard it too)
      *_space-<s>_desc-<network>_stat-r2split_statmap.nii.gz  --banded: unique variance
      *_space-<s>_desc-bestnetwork_dseg.nii.gz (+ .tsv labels)  bestlayer with layers/units
      *_space-<s>_desc-networks_encoding.tsv   per feature: voxels past FWE it predicts best
      *_space-<s>_desc-networks_clusters.tsv   each cluster past FWE: peak, r, best feature
      *_space-<s>_desc-networks_regions.tsv    --atlas: the same per region
      *_space-<s>_desc-<region>_networks.tsv   --region: the units carrying it (for evaluate)
    and, with two participants or more, the group's
    task-<t>_space-<s>_desc-networks_stat-{z,pfwe}_statmap.nii.gz.
    """
    from llm2nifti.analysis.encoding import encode as run
    from llm2nifti.analysis.encoding_model import EncodingModel

    model = EncodingModel(banded=banded, n_permutations=n_permutations, min_shift=min_shift,
                          backend=("torch_cuda" if device == "cuda"
                                   else "torch" if float32 else "numpy"),
                          dtype="float32" if float32 else "float64", scheduler=scheduler,
                          workers=workers, random_state=random_state)
    res = run(scan, fmri, estimator=model, networks=networks, layer_pcs=layer_pcs, units=units,
              participant=participant, task=task, site=site, word_column=word_column,
              fmri_participants=fmri_participants, space=space, confounds=confounds, hrf=hrf,
              delays=tuple(delays) or (1, 2, 3, 4), trim=trim, alpha=alpha, regions=regions,
              top_percent=top_percent, atlas=atlas, atlas_labels=atlas_labels, output=output,
              threads=threads, progress=not quiet)
    for who, r in res.participants.items():
        past = r["p_fwe"] <= alpha
        click.echo(f"sub-{who}: {int(past.sum()):,} of {len(past):,} voxels past FWE {alpha:g} "
                   f"(max r {r['r'].max():.3f}); {r['paths']['r'].parent}")
        for label, tsv in r.get("units", {}).items():
            click.echo(f"  units carrying {label}: {tsv}  (llm2nifti evaluate {tsv} -d {scan})")
    if res.group is not None:
        click.echo(f"group: {res.group}")
