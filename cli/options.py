"""Every option more than one command takes, declared once, with one help text.

A command module applies these decorators; it declares with ``click.option`` only what no
other command has. The same word means the same thing everywhere (``--task``: a BIDS task
label; ``--bootstrap``: resample the runs of a stable decomposition; ``--threshold``: the
``|z|`` of a network's units). Where two commands need different defaults, the help says why.

:func:`decomposition_options` turns one group of options into the configured estimator a
workflow receives (``estimator=``): the command never passes the decomposition's settings one
by one, and the defaults come from the library (``Decomposition``'s own and
``WORKFLOW_DECOMPOSITIONS``).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import click


class Option(click.Option):
    """A ``click.Option`` that knows the library parameter it feeds (``library``), so that a
    library error naming the parameter is shown with the flag (see :func:`flag_names`)."""

    def __init__(self, *args, library=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.library = library


def option(*names, **kwargs):
    """``click.option`` with :class:`Option` (``library=`` the parameter it feeds)."""
    return click.option(*names, cls=Option, **kwargs)


def flag_names(command):
    """``{library parameter: --flag}`` of a command's options."""
    out = {}
    for p in command.params:
        if isinstance(p, click.Option) and not p.hidden:
            flag = max(p.opts, key=len)
            out.setdefault(p.name, flag)
            if getattr(p, "library", None):
                out[p.library] = flag
    return out


def with_flags(message, command):
    """A library error, which names parameters (``n_components=30``, ``n_repeats``,
    ```bootstrap```), told in ``command``'s flags (``--n-components 30``, ``--n-runs``,
    ``--bootstrap``)."""
    flags = flag_names(command)

    def value(m):
        return f"{flags[m.group(1)]} {m.group(3) if m.group(3) is not None else m.group(4)}"

    for name in sorted(flags, key=len, reverse=True):
        pattern = rf"(?<![\w-])({re.escape(name)})=('([^']*)'|([^\s:;,)]+))"
        message = re.sub(pattern, value, message)
        message = message.replace(f"`{name}`", flags[name])
        if "_" in name:
            message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flags[name], message)
    return message


class _Participant(click.ParamType):
    """A participant label, typed as BIDS apps take it: ``01`` or ``sub-01``."""

    name = "LABEL"

    def convert(self, value, param, ctx):
        from bids_llm.naming import participant_label

        return None if value is None else participant_label(value)


#: The type of every option that names a participant.
PARTICIPANT = _Participant()


class CommaList(click.ParamType):
    """Values separated by commas (``0.5,1``) as a tuple; ``""`` or ``none``: empty."""

    def __init__(self, kind=str, replace=None):
        self.kind = kind
        self.replace = replace or {}
        self.name = {float: "NUMBERS", int: "INTEGERS"}.get(kind, "NAMES")

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)):
            return tuple(value)
        if value is None or str(value).strip().lower() in ("", "none"):
            return ()
        parts = [v.strip() for v in str(value).split(",") if v.strip()]
        try:
            return tuple(self.kind(self.replace.get(v, v)) for v in parts)
        except ValueError:
            self.fail(f"expected {self.name.lower()} separated by commas, got {value!r}", param,
                      ctx)

MODEL_FORMS = ("a Hugging Face folder, a .gguf file (or a folder of them), ollama:NAME[:TAG], "
               "or a Hugging Face id in the local cache")
SITES = ("mlp", "mlp-out", "attn", "residual", "experts", "mixer")
DTYPES = ("auto", "float32", "float16", "bfloat16")


# ----------------------------------------------------------------------------- the data
def participant_option(default="the only one"):
    """``--participant``: a BIDS participant label (``01`` or ``sub-01``)."""
    return option("--participant", type=PARTICIPANT, default=None,
                  help=f"BIDS participant label, 01 or sub-01 [default: {default}].")


def task_option(default="the only one", all_tasks=False):
    """``--task``: a BIDS task label (``all_tasks``: ``all`` takes every task together)."""
    extra = "; 'all': every task together" if all_tasks else ""
    return option("--task", default=None, help=f"BIDS task label [default: {default}]{extra}.")


SITE_KINDS_HELP = (
    "mlp: MLP hidden neurons (every routed and shared expert's in a mixture of experts); "
    "mlp-out: the MLP's output (the paper's units); attn: the heads' outputs (input of the "
    "attention output projection); residual: each block's output; experts: each expert's "
    "routing weight; mixer: a state-space mixer's units. `llm2nifti sites MODEL` lists what a "
    "model has.")


def site_option(default="the only one in the runs", choices=None, value=None, describe=False):
    """``--site``: the unit site (the ``acq`` entity of the runs).

    ``value``: a default site (else None: ``default`` says what is taken); ``describe``: the
    help says what each site is (where a model is recorded).
    """
    kwargs = dict(default=value, show_default=value is not None)
    kwargs["type"] = click.Choice(list(choices or SITES))
    what = SITE_KINDS_HELP if describe else "the runs' acq entity"
    return option("--site", help=f"Unit site ({what})" + (f" [default: {default}]."
                                                          if value is None else "."), **kwargs)


def runs_option(f):
    """``--runs``: BIDS run numbers."""
    return option("--runs", "run", default=None, help="Run numbers, e.g. 1,2 [default: all].")(f)


def dataset_option(what="the scan the input was made from"):
    """``--dataset``/``-d``: the scan a derivative belongs to."""
    return option("--dataset", "-d", required=True,
                  type=click.Path(exists=True, file_okay=False, path_type=Path),
                  help=f"The dataset: {what}.")


def output_option(default=None, required=False):
    """``--output``/``-o``: the folder of a command's outputs."""
    where = "" if default is None else f" [default: {default}]"
    return option("--output", "-o", required=required, default=None,
                  type=click.Path(file_okay=False, path_type=Path),
                  help=f"Folder of the outputs{where}.")


def threshold_option(top_k=False):
    """``--threshold``/``-t``: the ``|z|`` a unit's map value must pass to belong to a network.

    ``top_k``: the command also selects by ``--top-k``; the threshold is then none unless given.
    """
    from llm2nifti.defaults import Z_THRESHOLD

    default = f" [default: {Z_THRESHOLD}, or none with --top-k]" if top_k else ""
    return option("--threshold", "-t", type=float, default=None if top_k else Z_THRESHOLD,
                  show_default=not top_k, library="threshold",
                  help=f"|z| threshold of the networks' units{default}.")


def min_stability_option(choices=False):
    """``--min-stability``: keep the networks whose stability (ICASSO Iq) is at least this.

    ``choices``: also ``auto`` (the default) and ``all`` (fingerprint).
    """
    kwargs = (dict(default="auto", show_default=True, metavar="NUMBER|auto|all") if choices
              else dict(type=float, default=None))
    which = ("of the reference's networks compared; the other models keep all theirs. auto: "
             "0.9 where the reference's maps have stabilities and one reaches it, all "
             "otherwise; all: every network." if choices else "of the networks kept, e.g. 0.8.")
    return option("--min-stability", help=f"Minimum stability (decompose --n-runs) {which}",
                  **kwargs)


def fwe_alpha_option(what):
    """``--alpha``: the family-wise error level of what a command counts or keeps."""
    return option("--alpha", type=float, default=0.05, show_default=True,
                  help=f"FWE level of {what}.")


def top_percent_option(why):
    """``--top``: the top PERCENT of units a command keeps."""
    return option("--top", "top_percent", type=float, default=1.0, show_default=True,
                  help=f"Keep the top PERCENT of units {why} (the paper's 1%).")


def heldout_option(f):
    """``--heldout``: the text whose perplexity is compared."""
    return option("--heldout", default="lee-test", show_default=True,
                  help="Held-out text for perplexity (a built-in corpus, file or folder); 'none' "
                       "to skip.")(f)


def reference_option(what="the reference model"):
    """``--reference``/``-r``: the participant others are compared with."""
    return option("--reference", "-r", type=PARTICIPANT, required=True,
                  help=f"Participant label of {what}.")


def candidate_option(what="the variant", multiple=False):
    """``--candidate``/``-c``: the participant compared with the reference (repeatable)."""
    names = ("--candidate", "-c") + (("candidates",) if multiple else ())
    return option(*names, type=PARTICIPANT, required=True, multiple=multiple,
                  help=f"Participant label of {what}" + (" (repeatable)." if multiple else "."))


def n_permutations_option(what):
    """``--n-permutations``: draws of a permutation null."""
    return option("--n-permutations", type=int, default=1000, show_default=True,
                  help=f"Draws of the permutation null: {what}.")


# ----------------------------------------------------------------------------- the model
def gguf_file_option(f):
    """``--gguf-file``: which GGUF file of a model folder."""
    return option("--gguf-file", default=None,
                  help="Which GGUF file of a --model folder holding several.")(f)


def model_options(what):
    """``--model``/``-m`` and ``--gguf-file``: the model a command loads."""
    def decorate(f):
        f = gguf_file_option(f)
        f = option("--model", "-m", default=None,
                   help=f"The model ({what}): {MODEL_FORMS} [default: the embedded "
                        "SmolLM2-135M-Instruct].")(f)
        return f
    return decorate


def trust_remote_code_option(f):
    """``--trust-remote-code``: off unless asked."""
    return option("--trust-remote-code", is_flag=True,
                  help="Let transformers run the model's own code (off: only for models you "
                       "trust).")(f)


def device_option(what="", choices=None):
    """``--device``: the torch device a command computes on."""
    kind = click.Choice(list(choices)) if choices else None
    forms = "" if choices else ": cpu, cuda, cuda:N or auto"
    return option("--device", type=kind, default="cpu", show_default=True,
                  help=f"torch device{what}{forms}.")


def device_options(trust_remote_code=True):
    """``--device``, ``--dtype`` (and ``--trust-remote-code``): how the model runs."""
    def decorate(f):
        if trust_remote_code:
            f = trust_remote_code_option(f)
        f = option("--dtype", type=click.Choice(list(DTYPES)), default="auto", show_default=True,
                   help="Weights' precision; recorded activations are float32.")(f)
        return device_option()(f)
    return decorate


def word_column_option(f):
    """``--word-column``: the column of BIDS events files that holds the words heard."""
    return option("--word-column", default="word", show_default=True,
                  help="The column of the events files holding the words.")(f)


def random_state_option(f):
    """``--random-state``: the seed of a command's nulls (a decomposition has its own, in
    :func:`decomposition_options`)."""
    return option("--random-state", type=int, default=0, show_default=True,
                  help="Seed: the same seed gives identical output.")(f)


def threads_option(f):
    """``--threads``: torch's CPU threads."""
    return option("--threads", type=int, default=None,
                  help="torch CPU threads [default: the cores this process may use].")(f)


def quiet_option(f):
    """``--quiet``/``-q``: no progress bar."""
    return option("--quiet", "-q", is_flag=True, help="No progress bar.")(f)


def overwrite_option(what):
    """``--overwrite``: replace what a command would otherwise refuse to touch."""
    return option("--overwrite", is_flag=True, help=f"Replace {what}.")


def text_option(what, default=None, multiple=False, short=False, default_text=None):
    """``--text``: a text (a built-in corpus, a file, a folder or a table)."""
    names = ("--text", "-t") if short else ("--text",)
    if multiple:
        names += ("texts",)
    shown = "" if default_text is None else f" [default: {default_text}]"
    return option(*names, default=default, multiple=multiple, show_default=default is not None,
                  help=f"Text ({what}): a built-in corpus (lee, lee-test, pang-lee), a text file, "
                       "a folder of .txt files or a .jsonl/.tsv table"
                       + ("; repeatable" if multiple else "") + f"{shown}.")


def run_tokens_option(what=""):
    """``--run-tokens``: tokens (volumes) per run."""
    return option("--run-tokens", type=int, default=None,
                  help="Tokens (volumes) per run; one forward pass each [default: 1024 or the "
                       f"context window]{what}.")


# ----------------------------------------------------------------------------- interventions
def n_docs_option(default, why=""):
    """``--n-docs``: how many documents of a text are scored."""
    shown = "all" if default is None else default
    return option("--n-docs", type=int, default=default,
                  help=f"Score only the first N documents [default: {shown}{why}].")


def max_doc_tokens_option(default, why=""):
    """``--max-doc-tokens``: each scored document cut to this many tokens."""
    return option("--max-doc-tokens", type=int, default=default,
                  help=f"Cut each scored document to this many tokens [default: {default}{why}].")


def seeds_option(f):
    """``--seeds``: random unit sets (same count per layer) per control."""
    return option("--seeds", type=int, default=5, show_default=True,
                  help="Random unit sets (the same count per layer) per control.")(f)


def network_names_option(f):
    """``--networks``: which networks of a networks.tsv to use."""
    return option("--networks", "network_names", type=CommaList(), default=None,
                  help="Networks to use, e.g. FN00,FN03 or 0,3 [default: all].")(f)


# ----------------------------------------------------------------------------- decompositions
#: The FastICA settings of a decomposition (its starts, and the fast backend's FASTICA_OPTIONS).
FASTICA = ("n_init", "max_iter", "tol")


class _Library:
    """An option's default read from ``Decomposition()`` when first needed: the parameter's one
    default, written in the estimator, and no numerical import until a command runs or shows
    its help."""

    def __init__(self, name):
        self.name = name

    def __call__(self):
        from llm2nifti.analysis.decomposition import Decomposition

        return Decomposition().get_params()[self.name]

    def __str__(self):
        return str(self())


def _scheduler_specs(flag, what, workers):
    """``--scheduler`` and ``--workers``: where work is spread (Dask), as specs of
    :func:`decomposition_options` and :func:`scheduler_options`."""
    return {
        "scheduler": (("--scheduler",), dict(
            default="threads", show_default=True,
            help=f"Where {what} runs: threads (this process), processes (a local Dask cluster "
                 f"of {flag('workers')}), or the address of a running Dask scheduler "
                 "(tcp://host:8786).")),
        "workers": (("--workers",), dict(type=int, default=workers, show_default=True,
                                         help=f"Worker processes of {flag('scheduler')} "
                                              "processes.")),
    }


def scheduler_options(what, workers=2):
    """``--scheduler`` and ``--workers`` of a command that is not a decomposition's
    (``threads`` is passed on as None)."""
    def decorate(f):
        @functools.wraps(f)
        def command(*args, **kwargs):
            if kwargs.get("scheduler") == "threads":
                kwargs["scheduler"] = None
            return f(*args, **kwargs)

        for name, (flags, kw) in reversed(_scheduler_specs(lambda n: f"--{n}", what,
                                                           workers).items()):
            command = option(*flags, name, **kw)(command)
        return command
    return decorate


def decomposition_options(workflow, prefix="", only=None, without=(), into="estimator",
                          keep=("random_state",)):
    """The options of the decomposition a workflow runs, turned into one configured estimator.

    Parameters
    ----------
    workflow : str
        A key of ``WORKFLOW_DECOMPOSITIONS``: its backend and number of decompositions are the
        defaults (the help says why they are what they are).
    prefix : str
        Prepended to every flag (``"k-"``: ``--k-backend``), for a command whose own options
        would collide.
    only : sequence of str, optional
        The parameters offered (default: all); ``"fastica"`` stands for every FastICA setting
        (``FASTICA``).
    without : sequence of str
        Parameters not offered (``method`` and ``alpha`` where only CanICA makes sense).
    into : str
        The keyword the command function receives the estimator as.
    keep : sequence of str
        Parameters the command also receives as they are (the seed of its own nulls).
    """
    from llm2nifti.defaults import BACKENDS, METHODS, WORKFLOW_DECOMPOSITIONS

    backend, repeats, why = WORKFLOW_DECOMPOSITIONS[workflow]
    pre = prefix.replace("-", "_")

    def flag(name):
        return f"--{prefix}{name}"

    specs = {  # library parameter: (flag names, click keywords); the defaults are the library's
        "method": (("--method",), dict(type=click.Choice(list(METHODS)), default=_Library("method"),
                                       show_default=True, help="nilearn estimator.")),
        "backend": (("--backend",), dict(
            type=click.Choice(list(BACKENDS)), default=backend, show_default=True,
            help=f"CanICA's implementation: nilearn's, or fast: the same algorithm in torch (CPU "
                 f"or GPU); {backend} by default here: {why}.")),
        "n_components": (("--n-components",) + (("-k",) if not prefix else ()), dict(
            type=int, default=_Library("n_components"), show_default=True,
            help="Number of components (networks).")),
        "n_init": (("--n-init",), dict(
            default=_Library("n_init"), show_default=True,
            help="FastICA starts of each decomposition; the sparsest is kept. auto: 10, or 1 "
                 f"for each of {flag('n-runs')} (the clusters do the choosing).")),
        "max_iter": (("--max-iter",), dict(
            type=int, default=_Library("max_iter"), show_default=True,
            help="FastICA iterations per start at most (fast backend; nilearn's CanICA runs "
                 "scikit-learn's default).")),
        "tol": (("--tol",), dict(
            type=float, default=_Library("tol"), show_default=True,
            help="FastICA's convergence tolerance (fast backend; nilearn's CanICA runs "
                 "scikit-learn's default).")),
        "random_state": (("--random-state",), dict(
            type=int, default=_Library("random_state"), show_default=True,
            help="Seed: the same seed gives identical output.")),
        "n_jobs": (("--n-jobs",), dict(type=int, default=_Library("n_jobs"), show_default=True,
                                       help="nilearn backend: parallel jobs.")),
        "device": (("--device",), dict(default=_Library("device"), show_default=True,
                                       help="torch device of the fast backend (cpu, cuda).")),
        **_scheduler_specs(flag, "the fast backend's per-run work", _Library("workers")),
        "alpha": (("--dictlearning-alpha",), dict(
            type=float, default=_Library("alpha"), show_default=True,
            help="DictLearning sparsity (nilearn's alpha).")),
        "n_repeats": (("--n-runs",), dict(
            type=int, default=repeats, show_default=True,
            help="Decompositions clustered into stable components (ICASSO; seeds drawn from "
                 f"the first's), each with its stability; 1: a single decomposition; {repeats} "
                 f"by default here: {why}.")),
        "bootstrap": (("--bootstrap",), dict(
            is_flag=True, default=False, help=f"With {flag('n-runs')} 2 or more: each "
                                              "decomposition after the first reads a resample "
                                              "of the runs.")),
    }
    wanted = None if only is None else {n for o in only for n in (FASTICA if o == "fastica" else (o,))}
    chosen = [k for k in specs if (wanted is None or k in wanted) and k not in without]

    def key(name):
        return pre + name

    def decorate(f):
        @functools.wraps(f)
        def command(*args, **kwargs):
            values = {name: kwargs.pop(key(name)) if name not in keep else kwargs[key(name)]
                      for name in chosen}
            kwargs[into] = build_estimator(values, progress=not kwargs.get("quiet", True))
            return f(*args, **kwargs)

        for name in reversed(chosen):
            flags, kw = specs[name]
            flags = tuple(f"--{prefix}{fl[2:]}" if fl.startswith("--") else fl for fl in flags)
            command = option(*flags, key(name), library=name, **kw)(command)
        return command
    return decorate


def build_estimator(values, progress=False):
    """The estimator the options ``values`` describe (library parameter names).

    ``n_repeats`` 1: a :class:`~llm2nifti.analysis.Decomposition`; more: a
    :class:`~llm2nifti.analysis.StableDecomposition` of it.
    """
    from llm2nifti.analysis.decomposition import Decomposition, StableDecomposition

    values = dict(values)
    repeats = values.pop("n_repeats", 1)
    bootstrap = values.pop("bootstrap", False)
    if "n_init" in values and values["n_init"] != "auto":
        try:
            values["n_init"] = int(values["n_init"])
        except ValueError:
            raise click.BadParameter(f"{values['n_init']!r}: give a number of starts or auto",
                                     param_hint="--n-init") from None
    if values.get("scheduler") == "threads":
        values["scheduler"] = None
    one = Decomposition(progress=progress, **values)
    if repeats == 1 and not bootstrap:
        return one
    return StableDecomposition(one, n_repeats=repeats, bootstrap=bootstrap)


def former_name(old, param, type=None, multiple=False):
    """Accept ``old``, an earlier release's name of the option stored as ``param``, unlisted.

    Apply it above the decorators that declare ``param`` (``multiple``: a repeatable option,
    whose values join the new name's).
    """
    key = f"former_{param}"

    def decorate(f):
        @functools.wraps(f)
        def command(*args, **kwargs):
            value = kwargs.pop(key)
            if multiple:
                kwargs[param] = tuple(kwargs[param]) + tuple(value)
            elif value is not None:
                kwargs[param] = value
            return f(*args, **kwargs)
        return click.option(old, key, type=type, default=None, hidden=True,
                            multiple=multiple)(command)
    return decorate
