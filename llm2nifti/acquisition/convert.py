"""``scan``: record a model reading text and write a BIDS-like pseudo-fMRI dataset."""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bids_llm.dataset import DatasetWriter, is_dataset
from bids_llm.events import events_tsv
from bids_llm.io import write_json
from bids_llm.space import space_view

from ..errors import UsageError
from ..interrupts import deferred, handle_signals
from ..layout import NeuronLayout
from ..models import DEFAULT_MODEL, load_model, model_label, set_threads, weights_hash
from .recording import Recorder, pinned_buffer
from .unitstats import RunningStats
from ..sites import resolve_site
from .stimuli import BUILTIN_CORPORA, load_documents, make_runs, task_label, tokenize_documents

__all__ = ["scan", "ScanResult", "ScanSettings", "plan_scan", "record_runs"]

log = logging.getLogger(__name__)
TR = 1.0
DEFAULT_RUN_TOKENS = 1024


@dataclass
class ScanResult:
    """What :func:`scan` wrote.

    Attributes
    ----------
    root : Path
        Dataset folder.
    participant, task : str
    layout : NeuronLayout
    runs : list of Path
        Bold files of this scan, in run order.
    skipped : list of int
        Runs found finished on disk and not redone (``resume=True``).
    n_tokens : int
    """

    root: Path
    participant: str
    task: str
    layout: NeuronLayout
    runs: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    n_tokens: int = 0


def _default_task(text):
    if text is None:
        return BUILTIN_CORPORA["lee"][2]
    if str(text) in BUILTIN_CORPORA:
        return BUILTIN_CORPORA[str(text)][2]
    return task_label(Path(text).stem)


def _context_window(model):
    n = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    return int(n) if n else None


def _versions():
    from bids_llm.outputs import software

    return software("torch", "transformers", "nibabel", "numpy", "python")


def _source_info(lm):
    """Where the weights came from (:mod:`llm2nifti.sources`), or that they were given in memory."""
    return getattr(lm, "llm2nifti_source_", None) or {"Format": "in-memory model"}


def _check_output(output, resume, overwrite):
    out = Path(output)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other: choose one")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} is a file: pass a folder")
    # code/llm2nifti alone: a dataset that another convert has just begun
    if out.is_dir() and any(out.iterdir()) and not (is_dataset(out) or (out / "code" / "llm2nifti").is_dir()):
        raise UsageError(f"output folder {out} is not empty and is not a dataset: choose a new or empty folder")


@dataclass(frozen=True)
class ScanSettings:
    """What is scanned, where, how it is cut into runs and how it is written.

    Build it with :meth:`build`, which validates the arguments once; the
    command line and :func:`scan` both do.

    Parameters
    ----------
    output : Path
        Dataset folder: new, empty, or an existing dataset (a new model or task
        is added to it).
    model : str
        The embedded default (SmolLM2-135M-Instruct), or any form :mod:`llm2nifti.sources`
        accepts: a folder, a ``.gguf`` file, ``ollama:NAME[:TAG]``, a cached Hugging Face id.
    gguf_file : str, optional
        Which GGUF file of a ``model`` folder holding several.
    text : str or path, optional
        Stimuli (see :func:`llm2nifti.acquisition.stimuli.load_documents`); default: the Lee
        news corpus.
    participant, task : str
        BIDS labels (defaults: from the model's name and the text).
    neurons : {"mlp", "mlp-out", "attn", "residual", "experts", "mixer"}
        Which units (see :class:`llm2nifti.sites.Site`).
    layers : str or sequence of int, optional
        Layer subset, e.g. ``"0-11"``; default every layer that has the units.
    experts : str or sequence of int, optional
        Mixture-of-experts models, ``mlp`` and ``experts`` units: the experts recorded,
        e.g. ``"0-7"``; default all.
    run_tokens : int, optional
        Tokens per run (one forward pass each); at most 32,767 and the context
        window. Default: 1024, or the context window if it is shorter.
    max_tokens : int, optional
        Cap on the total number of tokens.
    encoding : str, optional
        Encoding of text files.
    id_column, text_column : str
        Columns of a ``.jsonl``/``.tsv`` stimulus table.
    bos : bool
        Open each document with the BOS token (see :mod:`llm2nifti.acquisition.stimuli`).
    device, dtype : str
        Where and in which precision the model runs; activations are stored as float32.
    trust_remote_code : bool
        Let transformers run the model's own code (off by default).
    threads : int, optional
        torch CPU threads (default: available cores).
    cache : path, optional
        Cache of the converted default model.
    compress : bool
        Write ``.nii.gz`` instead of ``.nii`` (slower; not memory-mappable).
    resume : bool
        Keep finished runs of an interrupted scan with the same settings, do the rest.
    overwrite : bool
        Delete this participant's runs of this task and site first.
    progress : bool
        Show a progress bar over tokens.
    words : sequence of path
        BIDS events files of what human participants heard, instead of ``text``: each is one
        document, read in the order given (see :mod:`llm2nifti.acquisition.listening`); the
        events gain each token's ``word_onset``, ``word_duration`` and ``stimulus_file``, and
        the task label defaults to the first file's ``task`` entity.
    word_column : str
        The events files' column holding the words.
    reset_context : bool
        Begin a run (a forward pass: the model's context starts afresh) at each document, so
        that no document is read in the context of the one before (with ``words``: each
        events file on its own).
    """

    output: Path
    model: str
    text: object
    participant: str
    task: str
    neurons: str = "mlp"
    layers: object = None
    experts: object = None
    run_tokens: int | None = None
    max_tokens: int | None = None
    encoding: str | None = None
    id_column: str = "id"
    text_column: str = "text"
    bos: bool = True
    device: str = "cpu"
    dtype: str = "auto"
    trust_remote_code: bool = False
    threads: int | None = None
    cache: object = None
    compress: bool = False
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    gguf_file: str | None = None
    words: tuple = ()
    word_column: str = "word"
    reset_context: bool = False

    @classmethod
    def build(cls, output, model=None, text=None, *, participant=None, label=None, task=None,
              **options):
        """Validated settings from :func:`scan`'s arguments (``label``: an older name of
        ``participant``)."""
        _check_output(output, options.get("resume", False), options.get("overwrite", False))
        label = participant if participant is not None else label
        name = DEFAULT_MODEL if model is None else str(model)
        participant = model_label(name) if label is None else _label(label, "--participant")
        words = tuple(str(w) for w in options.pop("words", ()) or ())
        if words:
            from .listening import word_events_documents

            if text is not None:
                raise UsageError("give the text to read with --text or with --words, not both")
            _, _, heard_task = word_events_documents(words, options.get("word_column", "word"))
            if task is None:
                task = heard_task or task_label(Path(words[0]).name.split(".")[0])
            options["words"] = words
        task = _default_task(text) if task is None else _label(task, "--task")
        return cls(Path(output), name, text, participant, task, **options)

    @property
    def extension(self):
        return ".nii.gz" if self.compress else ".nii"


@dataclass
class _Plan:
    """A scan ready to run: the loaded model, its site and layout, the tokens cut into runs."""

    settings: ScanSettings
    lm: object
    tokenizer: object
    site: object
    layout: NeuronLayout
    stream: object
    runs: list
    run_tokens: int
    writer: DatasetWriter
    record: dict  # the settings --resume compares, saved in code/llm2nifti/
    heard: list | None = None  # convert --words: each document's WordTimes


def scan(output, model=None, text=None, *, loaded=None, **options):
    """Record ``model`` reading ``text`` and write a BIDS-like dataset of 4D NIfTI runs.

    Parameters
    ----------
    output : path
        Dataset folder: new, empty, or an existing dataset.
    model : str or path, optional
        The embedded default (SmolLM2-135M-Instruct), a Hugging Face id or a folder.
    text : str or path, optional
        Stimuli; default: the Lee news corpus.
    loaded : (model, tokenizer), optional
        An already loaded model and tokenizer (``model`` then only names it).
    **options
        ``participant`` (BIDS label; default: from the model's name), ``task``, and the
        other fields of
        ``ScanSettings``: ``neurons``, ``layers``, ``run_tokens``,
        ``max_tokens``, ``encoding``, ``id_column``, ``text_column``, ``bos``,
        ``device``, ``dtype``, ``trust_remote_code``, ``threads``, ``cache``,
        ``compress``, ``resume``, ``overwrite``, ``progress``, ``gguf_file``.

    Returns
    -------
    ScanResult
    """
    settings = ScanSettings.build(output, model, text, **options)
    plan = plan_scan(settings, loaded)
    # Input is valid: from here on, write, as the only writer of this participant and task.
    # Signals are handled here too, so that a Python caller (a notebook) is as safe as the CLI.
    with handle_signals(), plan.writer.exclusive():
        _check_existing(plan)  # again: another writer may have finished in the meantime
        plan.writer.clean_temporaries()
        if settings.overwrite:
            plan.writer.remove_existing()
        result = ScanResult(settings.output, settings.participant, settings.task, plan.layout,
                            n_tokens=len(plan.stream))
        record_runs(plan, result)
        ext = settings.extension
        result.runs = [plan.writer.bold_path(r, ext) for r in range(1, len(plan.runs) + 1)]
        # The runs under a space label, so that nilearn's first_level_from_bids finds them.
        space_view(settings.output, result.runs, plan.writer.anat_path("mask", ".nii"))
    return result


def plan_scan(settings, loaded=None):
    """Load the text and the model, cut the tokens into runs, check ``--resume``; write nothing."""
    s = settings
    if s.threads is not None or s.device == "cpu":
        set_threads(s.threads)
    heard = None
    if s.words:
        from .listening import word_events_documents

        documents, heard, _ = word_events_documents(s.words, s.word_column)
    else:
        documents = load_documents(s.text, encoding=s.encoding, id_column=s.id_column,
                                   text_column=s.text_column)
    lm, tokenizer = loaded if loaded is not None else load_model(
        s.model, device=s.device, dtype=s.dtype, trust_remote_code=s.trust_remote_code,
        cache=s.cache, gguf_file=s.gguf_file)
    site = resolve_site(lm, s.neurons, s.layers, experts=s.experts)
    layout = NeuronLayout(site)
    stream = tokenize_documents(documents, tokenizer, max_tokens=s.max_tokens, bos=s.bos)
    context = _context_window(lm)
    run_tokens = s.run_tokens
    if run_tokens is None:
        run_tokens = min(DEFAULT_RUN_TOKENS, context or DEFAULT_RUN_TOKENS)
    conditions = list(dict.fromkeys(d.condition for d in documents if d.condition is not None))
    # A localizer's items are never cut in two: runs end where an item begins.
    starts = np.flatnonzero(stream.position == 0) if conditions else None
    breaks = np.flatnonzero(stream.position == 0) if s.reset_context else None
    runs = make_runs(len(stream), run_tokens, context, starts=starts, breaks=breaks)
    _check_memory(lm, layout, max(b - a for a, b in runs), run_tokens)

    writer = DatasetWriter(s.output, s.participant, s.task, layout, conditions=conditions,
                           heard=heard is not None)
    writer.check_layout()
    writer.check_documents(_documents_read(stream))
    record = {
        "model": s.model, "weights_sha256": None, "site": site.to_dict(),
        "task": s.task, "run_tokens": int(run_tokens), "n_tokens": len(stream),
        "extension": s.extension, "bos": bool(s.bos),
        "tokens_sha256": hashlib.sha256(stream.ids.tobytes()).hexdigest(),
        "source": _source_info(lm),
    }
    if s.reset_context:
        record["reset_context"] = True
    if heard is not None:  # --resume goes on only with the same events files
        record["words"] = [{"file": t.source, "onsets_sha256": hashlib.sha256(
            t.onset.tobytes() + t.duration.tobytes()).hexdigest()} for t in heard]
    plan = _Plan(s, lm, tokenizer, site, layout, stream, runs, int(run_tokens), writer, record,
                 heard)
    _check_existing(plan)
    return plan


def _check_memory(lm, layout, longest, run_tokens):
    """Refuse, before anything is written, runs whose buffers would not fit in memory.

    The model is already loaded; what is left to hold is two run buffers (one being read, one
    being written) and one forward pass of ``longest`` tokens: per layer, the residual stream
    and MLP activations and, in eager attention, the score matrices. On a GPU only the buffers
    count against host memory.
    """
    from ..memory import check_fits

    cfg = getattr(lm, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    inter = getattr(cfg, "intermediate_size", 0) or 0
    if isinstance(inter, (list, tuple)):  # a width per layer (Gemma 3n): the widest counts
        inter = max(inter, default=0)
    inter = int(inter) or 4 * hidden
    heads = int(getattr(cfg, "num_attention_heads", 0) or 0)
    itemsize = next(lm.parameters()).element_size()
    buffers = 2 * layout.empty_buffer(0).strides[0] * longest
    forward = longest * (8 * hidden + 3 * inter) * itemsize + heads * longest * longest * 4
    if next(lm.parameters()).device.type != "cpu":
        forward = 0
    check_fits(buffers + forward, f"convert with runs of {longest} tokens x {layout.n_neurons} "
                                  "neurons", f"use a smaller --run-tokens (now {run_tokens})")


def _check_existing(plan):
    """Refuse to mix with finished runs, unless resuming with the same settings."""
    s, writer, record = plan.settings, plan.writer, plan.record
    existing = writer.existing_runs()
    if existing and not (s.resume or s.overwrite):
        raise UsageError(
            f"{s.output} already holds runs of sub-{s.participant} task-{s.task}: pass --resume "
            "to finish them, --overwrite to redo them, or choose another --output")
    if existing and s.resume and writer.plan_path.is_file():
        if record["weights_sha256"] is None:
            record["weights_sha256"] = weights_hash(plan.lm)
        old = json.loads(writer.plan_path.read_text())
        # Not compared: keys a record of an older version lacks, and the source's file name
        # (the weights' hash, compared, says whether the weights are the same).
        diff = sorted(k for k in record if k in old and k != "source" and old[k] != record[k])
        if diff:
            raise UsageError(f"cannot resume: the finished runs were made with other settings "
                             f"({', '.join(diff)}): use the same options, or --overwrite")


def _write_dataset_files(plan):
    """Dataset files besides the runs (first job of the writer thread)."""
    lm, site, writer, record = plan.lm, plan.site, plan.writer, plan.record
    if record["weights_sha256"] is None:  # ~0.5 s for 135M parameters: overlaps run 1
        record["weights_sha256"] = weights_hash(lm)
    writer.init_dataset()
    writer.write_documents(_documents_read(plan.stream))
    writer.write_layout()
    write_json(writer.plan_path, record)
    writer.add_participant({
        "model": plan.settings.model, "architecture": site.architecture, "n_layers": site.n_layers,
        "neurons_per_layer": _mlp_width(lm, site),
        "n_parameters": sum(p.numel() for p in lm.parameters()),
        "weights_sha256": record["weights_sha256"],
    })


def _documents_read(stream):
    """``(id, text)`` of the documents the stream holds tokens of (the stimuli table)."""
    return [(stream.documents[d].id, stream.documents[d].text)
            for d in sorted(set(stream.document.tolist()))]


def _mlp_width(lm, site):
    """MLP neurons of the widest layer (participants.tsv), or n/a for a model without an MLP."""
    if site.kind == "mlp":
        return site.width
    try:
        return resolve_site(lm, "mlp").width
    except UsageError:
        return "n/a"


def _common_sidecar(plan):
    """Sidecar fields shared by every run of the scan."""
    s, site, lm = plan.settings, plan.site, plan.lm
    return {
        "TaskName": s.task, "RepetitionTime": TR,
        "TaskDescription": f"The language model {s.model} reads text; one volume per token.",
        "Model": s.model, "Architecture": site.architecture, "NeuronSite": site.kind,
        "HookedModules": site.module_template, "Layers": list(site.layers),
        "NeuronLayout": plan.layout.to_dict(), "Tokenizer": type(plan.tokenizer).__name__,
        "ModelDtype": str(next(lm.parameters()).dtype).replace("torch.", ""),
        "DataDtype": "float32", "BOS": bool(s.bos), "RunTokens": plan.run_tokens,
        "ModelSource": _source_info(lm),
        "SoftwareVersions": "; ".join(f"{k} {v}" for k, v in _versions().items()),
    }


def _run_files(plan, common, token_text, doc_ids, r, start, stop):
    """Sidecar and events text of run ``r`` (tokens ``start:stop``)."""
    stream = plan.stream
    sidecar = dict(common, Run=r, TokenRange=[int(start), int(stop)],
                   Documents=sorted({doc_ids[d] for d in stream.document[start:stop]},
                                    key=doc_ids.index))
    trial_types = None
    if plan.writer.conditions:  # the BOS token opening each item is the baseline (n/a)
        trial_types = [None if p == 0 and plan.settings.bos else stream.documents[d].condition
                       for d, p in zip(stream.document[start:stop], stream.position[start:stop])]
    heard = None
    if plan.heard is not None:
        from .listening import token_word_times

        heard = token_word_times(plan.heard, stream.document[start:stop], stream.word[start:stop])
    events = events_tsv(token_text[start:stop], stream.ids[start:stop],
                        [doc_ids[d] for d in stream.document[start:stop]],
                        stream.position[start:stop], tr=TR, trial_types=trial_types,
                        spans=(stream.char_start[start:stop], stream.char_end[start:stop],
                               stream.word[start:stop]), heard=heard)
    return sidecar, events


def record_runs(plan, result):
    """Read each run in one forward pass; writer threads save the run and add its statistics.

    Two writer threads work at once: one adds the run to the unit statistics, the other writes
    the run (hashing it as it goes). On a GPU they work while the next run is read; on a CPU,
    where the forward pass already has every core, they run right after it (CPU work beside a
    multi-threaded forward pass stalls all its threads, which costs more than waiting).
    Memory stays at two run buffers whatever the corpus (reusing them spares the page faults
    of fresh 100 MB allocations). Runs found finished on disk under ``resume`` are skipped and
    listed in ``result.skipped``. Every call into the writer pool runs with Ctrl-C held
    (:func:`~llm2nifti.interrupts.deferred`), so an interruption lands in the forward pass or
    between runs, never inside a lock the writer threads need; the run being written is
    finished first.
    """
    s, stream, layout, writer = plan.settings, plan.stream, plan.layout, plan.writer
    ext = s.extension
    common = _common_sidecar(plan)
    token_text = plan.tokenizer.batch_decode([[int(i)] for i in stream.ids])
    doc_ids = [d.id for d in stream.documents]
    device_t = next(plan.lm.parameters()).device
    overlap = device_t.type != "cpu"
    # The transformer without its language-model head: the neurons are all inside it,
    # and the head's vocabulary projection is a fifth of a small model's forward cost.
    body = getattr(plan.lm, "base_model", plan.lm)
    bar = tqdm(total=len(stream), unit="tok", unit_scale=True, disable=not s.progress,
               desc=f"sub-{s.participant} task-{s.task}")
    longest = max(stop - start for start, stop in plan.runs)
    buffers, slot = [None, None], 0
    stats = RunningStats(layout.n_neurons)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="llm2nifti-write")
    # The dataset's own files are written before the first run that is kept or recorded whole
    # (a model that overflows on its first run leaves nothing behind).
    pending, in_flight, described = [], 0, []
    try:
        for r, (start, stop) in enumerate(plan.runs, 1):
            if s.resume and writer.run_done(r, ext):
                result.skipped.append(r)
                bar.update(stop - start)
                with deferred():  # its statistics are read back from disk, in order
                    _wait(pending + _describe_once(pool, plan, described))
                    pending = [pool.submit(_add_saved_run, stats, writer.bold_path(r, ext))]
                continue
            if buffers[slot] is None:  # page-locked on a GPU: copies need not wait
                buffers[slot] = (pinned_buffer(layout, longest) if device_t.type == "cuda"
                                 else layout.empty_buffer(longest))
            buf = buffers[slot][: stop - start]  # its previous write was waited for below
            slot ^= 1
            ids = torch.as_tensor(stream.ids[start:stop]).reshape(1, -1).to(device_t)
            with torch.inference_mode(), Recorder(plan.lm, plan.site, buffer=buf) as rec:
                body(input_ids=ids, use_cache=False)
            if not rec.all_finite():
                raise _overflow(plan, r, buf)
            sidecar, events = _run_files(plan, common, token_text, doc_ids, r, start, stop)
            img = layout.buffer_to_img(buf, tr=TR)
            with deferred():
                _wait(pending + _describe_once(pool, plan, described))
                bar.update(in_flight)
                pending = [pool.submit(_add_run_stats, stats, layout, buf),
                           pool.submit(writer.write_run, r, img, sidecar, events, ext)]
                in_flight = stop - start
                if not overlap:
                    _wait(pending)
        with deferred():
            _wait(pending)
            bar.update(in_flight)
            pending = [pool.submit(writer.write_unit_stats, stats.volumes(), stats.n_tokens,
                                   [writer.bold_path(r, ext) for r in range(1, len(plan.runs) + 1)])]
            _wait(pending)
    finally:
        with deferred():
            pool.shutdown(wait=True)
            bar.close()


def _describe_once(pool, plan, described):
    """The job writing the dataset's own files, the first time only (``described`` remembers)."""
    if described:
        return []
    described.append(True)
    return [pool.submit(_write_dataset_files, plan)]


def _overflow(plan, r, buf):
    """The one-line refusal of a run whose units hold inf or NaN (it is not written)."""
    t, k, n = np.argwhere(~np.isfinite(buf))[0]
    dtype = str(next(plan.lm.parameters()).dtype).replace("torch.", "")
    kept = f" (runs 1-{r - 1} are written)" if r > 1 else ""
    return UsageError(
        f"run {r}: the model's {plan.site.kind} units are not finite (inf or NaN) from token {t} "
        f"of the run, layer {plan.site.layers[k]} neuron {n}: the model overflowed in {dtype}"
        f"{kept}; convert again with --dtype float32 and --overwrite")


def _wait(futures):
    """Wait for every writer job; the first error is raised once all have finished."""
    for f in futures:
        f.exception()
    for f in futures:
        f.result()
    futures.clear()


def _add_run_stats(stats, layout, buf):
    """Writer-thread job: add the run to the unit statistics."""
    stats.update(buf[:, :, :layout.width] if layout.uniform else layout.from_buffer(buf))


def _add_saved_run(stats, path):
    """Writer-thread job: add a run kept from an earlier convert (``--resume``)."""
    from bids_llm.dataset import load_run

    stats.update(load_run(path)[0])


def _label(value, what):
    from bids_llm.naming import label as bids_label

    try:
        return bids_label(value, what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
