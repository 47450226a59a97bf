"""Command line of llm2nifti (installed as ``llm2nifti.cli``)."""
