"""``llm2nifti``: the command line. Each command parses options, calls one API function, prints.

The group turns the library's errors into one line and exit status 2, naming the flags the user
typed; the options themselves are declared once, in :mod:`llm2nifti.cli.options`.
"""

from __future__ import annotations

import errno
import logging

import click

from llm2nifti._version import __version__
from llm2nifti.errors import UsageError
from llm2nifti.interrupts import exit_status, handle_signals


_DISK_ERRORS = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
                errno.EROFS: "choose a writable folder", errno.EACCES: "check the permissions",
                errno.EPERM: "check the permissions"}


class _Group(click.Group):
    """Bad input: a one-line error and exit status 2. Ctrl-C or SIGTERM: 130 or 143.

    Signals are held while the commands talk to their worker threads
    (:mod:`llm2nifti.interrupts`), so an interruption never leaves a lock held.
    """

    def invoke(self, ctx):
        try:
            with handle_signals():
                return super().invoke(ctx)
        except UsageError as exc:  # the library names parameters; the user typed flags
            from .options import with_flags

            command = self.commands.get(ctx.invoked_subcommand)
            message = str(exc) if command is None else with_flags(str(exc), command)
            click.echo(f"Error: {message}", err=True)
            ctx.exit(2)
        except click.UsageError as exc:  # click's own: bad option values, missing arguments
            where = f"llm2nifti {exc.ctx.info_name} --help" if exc.ctx and exc.ctx.parent else \
                "llm2nifti --help"
            message = exc.format_message().replace("\n", " ").rstrip(".")
            click.echo(f"Error: {message}: see `{where}`", err=True)
            ctx.exit(2)
        except OSError as exc:  # a full, read-only or forbidden folder: no bug, no traceback
            if exc.errno not in _DISK_ERRORS:
                raise
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"Error: {exc.strerror}{where}: {_DISK_ERRORS[exc.errno]}, then run the "
                       "command again (convert: with --resume)", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            hint = (": finished runs are kept; re-run with --resume to go on"
                    if ctx.invoked_subcommand == "convert" else "")
            click.echo(f"Interrupted{hint}.", err=True)
            ctx.exit(exit_status(exc))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llm2nifti")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens.")
def main(verbose):
    """Scan a language model like a brain: neurons are voxels, tokens are volumes.

    \b
    llm2nifti convert DATASET                   record a model reading text (default: SmolLM2-135M, Lee news)
    llm2nifti sites [MODEL]                     list neuron sites and their neuron counts
    llm2nifti decompose DATASET                 CanICA / DictLearning over the runs
    llm2nifti networks COMPONENTS -d DATASET    map components back to exact neurons
    llm2nifti recurrence DATASET                do networks recur across runs and seeds?
    llm2nifti evaluate NETWORKS_TSV             inhibit / amplify / retain networks vs controls
    llm2nifti prune NETWORKS_TSV                save a smaller model without the other neurons
    llm2nifti localize DATASET                  GLM localizer: sentences vs nonwords, per unit
    llm2nifti connectivity COMPONENTS -d DATASET  connectomes between networks (nilearn)
    llm2nifti words DATASET                     word-level runs: one volume per word
    llm2nifti fingerprint DATASET -r A -c B     compare models as subjects (fingerprint, ISC, RSA)
    llm2nifti derive OUTPUT --kind KIND         variants of known lineage (fine-tuned, amplified, ...)
    llm2nifti diff DATASET -r BASE -c VARIANT   what changed between two checkpoints, unit by unit
    llm2nifti patch UNITS_TSV -d DATASET ...    do the changed units carry the change?
    llm2nifti encode SCAN --fmri FMRI           the networks predict human fMRI of the same story
    llm2nifti report DATASET                    one HTML page per participant
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
