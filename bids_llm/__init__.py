"""bids_llm: the file layer of llm2nifti.

BIDS names and entities (:mod:`bids_llm.naming`), atomic writes (:mod:`bids_llm.io`), tables
that every reader reads whole (:mod:`bids_llm.tsv`), token events and documents
(:mod:`bids_llm.events`), the dataset's writer and reader (:mod:`bids_llm.dataset`),
derivative folders (:mod:`bids_llm.derivatives`), the table of every derivative
(:mod:`bids_llm.outputs`), the space-labelled view for nilearn (:mod:`bids_llm.space`) and human
fMRI datasets as fMRIPrep leaves them (:mod:`bids_llm.fmriprep`). It imports nibabel and the neuron layout, never torch or transformers.
"""
