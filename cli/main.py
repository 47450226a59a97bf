"""``llm2nifti``: the command line. Each command parses options, calls one API function, prints."""

from __future__ import annotations

import logging
import sys

import click

from llm2nifti._version import __version__
from llm2nifti.errors import UsageError


class _Group(click.Group):
    """Turns bad input into a one-line error with exit status 2, and Ctrl-C into 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted: finished runs are kept; re-run with --resume to go on.", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llm2nifti")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens.")
def main(verbose):
    """Scan a language model like a brain: neurons are voxels, tokens are volumes.

    \b
    llm2nifti convert OUT            record the default model reading the Lee corpus
    llm2nifti sites MODEL            list neuron sites and counts
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if not verbose:
            hf_logging.set_verbosity_error()
            logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    except ImportError:  # pragma: no cover
        pass


# Commands attach themselves to `main` on import.
from . import convert  # noqa: E402,F401
from . import decompose_cmd  # noqa: E402,F401
from . import evaluate_cmd  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
