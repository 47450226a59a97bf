"""``scan``: record a model reading text and write a BIDS-like pseudo-fMRI dataset."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bids_llm.dataset import DatasetWriter, is_dataset
from bids_llm.events import events_tsv
from bids_llm.io import write_json

from .. import _version
from ..errors import UsageError
from ..layout import NeuronLayout
from ..models import DEFAULT_MODEL, load_model, model_label, set_threads, weights_hash
from .recording import Recorder
from ..sites import resolve_site
from .stimuli import BUILTIN_CORPORA, load_documents, make_runs, task_label, tokenize_documents

__all__ = ["scan", "ScanResult"]

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
    import nibabel
    import transformers

    return {"llm2nifti": _version.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "nibabel": nibabel.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _check_output(output, resume, overwrite):
    out = Path(output)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other: choose one")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} is a file: pass a folder")
    if out.is_dir() and any(out.iterdir()) and not is_dataset(out):
        raise UsageError(f"output folder {out} is not empty and is not a dataset: choose a new or empty folder")


def scan(output, model=None, text=None, *, neurons="mlp", layers=None, run_tokens=None,
         max_tokens=None, task=None, label=None, device="cpu", dtype="auto", compress=False,
         resume=False, overwrite=False, trust_remote_code=False, encoding=None, bos=True,
         threads=None, progress=True, cache=None, loaded=None, id_column="id",
         text_column="text"):
    """Record ``model`` reading ``text`` and write a BIDS-like dataset of 4D NIfTI runs.

    Parameters
    ----------
    output : path
        Dataset folder: new, empty, or an existing dataset (a new model or task
        is added to it).
    model : str or path, optional
        The embedded default (SmolLM2-135M-Instruct), a Hugging Face id or a folder.
    text : str or path, optional
        Stimuli (see :func:`llm2nifti.acquisition.stimuli.load_documents`); default: the Lee news corpus.
    neurons : {"mlp", "residual"}
    layers : str or sequence of int, optional
        Layer subset, e.g. ``"0-11"``; default all.
    run_tokens : int, optional
        Tokens per run (one forward pass each); at most 32,767 and the context
        window. Default: 1024, or the context window if it is shorter.
    max_tokens : int, optional
        Cap on the total number of tokens.
    task, label : str, optional
        BIDS task and participant labels (defaults: from the text and the model name).
    device, dtype : str
        Where and in which precision the model runs; activations are stored as float32.
    compress : bool
        Write ``.nii.gz`` instead of ``.nii`` (slower; not memory-mappable).
    resume : bool
        Keep finished runs of an interrupted scan with the same settings, do the rest.
    overwrite : bool
        Delete this participant's runs of this task and site first.
    trust_remote_code : bool
        Let transformers run the model's own code (off by default).
    encoding : str, optional
        Encoding of text files.
    id_column, text_column : str
        Columns of a ``.jsonl``/``.tsv`` stimulus table.
    bos : bool
        Open each document with the BOS token (see :mod:`llm2nifti.acquisition.stimuli`).
    threads : int, optional
        torch CPU threads (default: available cores).
    progress : bool
        Show a progress bar over tokens.
    cache : path, optional
        Cache of the converted default model.
    loaded : (model, tokenizer), optional
        An already loaded model and tokenizer (``model`` then only names it).

    Returns
    -------
    ScanResult
    """
    _check_output(output, resume, overwrite)
    if threads is not None or device == "cpu":
        set_threads(threads)
    name = DEFAULT_MODEL if model is None else str(model)
    participant = model_label(name) if label is None else _label(label, "--label")
    task = _default_task(text) if task is None else _label(task, "--task")

    documents = load_documents(text, encoding=encoding, id_column=id_column,
                               text_column=text_column)
    lm, tokenizer = loaded if loaded is not None else load_model(
        name, device=device, dtype=dtype, trust_remote_code=trust_remote_code, cache=cache)
    site = resolve_site(lm, neurons, layers)
    layout = NeuronLayout(site)
    stream = tokenize_documents(documents, tokenizer, max_tokens=max_tokens, bos=bos)
    context = _context_window(lm)
    if run_tokens is None:
        run_tokens = min(DEFAULT_RUN_TOKENS, context or DEFAULT_RUN_TOKENS)
    runs = make_runs(len(stream), run_tokens, context)
    ext = ".nii.gz" if compress else ".nii"

    writer = DatasetWriter(output, participant, task, layout)
    writer.check_layout()
    existing = writer.existing_runs()
    plan = {
        "model": name, "weights_sha256": None, "site": site.to_dict(),
        "task": task, "run_tokens": int(run_tokens), "n_tokens": len(stream), "extension": ext,
        "bos": bool(bos),
        "tokens_sha256": hashlib.sha256(stream.ids.tobytes()).hexdigest(),
    }
    if existing and not (resume or overwrite):
        raise UsageError(
            f"{output} already holds runs of sub-{participant} task-{task}: pass --resume to finish "
            "them, --overwrite to redo them, or choose another --output")
    if existing and resume and writer.plan_path.is_file():
        plan["weights_sha256"] = weights_hash(lm)
        old = json.loads(writer.plan_path.read_text())
        diff = sorted(k for k in plan if old.get(k) != plan[k])
        if diff:
            raise UsageError(f"cannot resume: the finished runs were made with other settings "
                             f"({', '.join(diff)}): use the same options, or --overwrite")

    def prepare():
        """Dataset files besides the runs (first job of the writer thread)."""
        if plan["weights_sha256"] is None:  # ~0.5 s for 135M parameters: overlaps run 1
            plan["weights_sha256"] = weights_hash(lm)
        writer.init_dataset()
        writer.write_layout()
        write_json(writer.plan_path, plan)
        writer.add_participant({
            "model": name, "architecture": site.architecture, "n_layers": site.n_layers,
            "neurons_per_layer": site.width if site.kind == "mlp" else resolve_site(lm, "mlp").width,
            "n_parameters": sum(p.numel() for p in lm.parameters()),
            "weights_sha256": plan["weights_sha256"],
        })

    # Input is valid: from here on, write.
    writer.clean_temporaries()
    if overwrite:
        writer.remove_existing()

    result = ScanResult(Path(output), participant, task, layout, n_tokens=len(stream))
    token_text = tokenizer.batch_decode([[int(i)] for i in stream.ids])
    doc_ids = [d.id for d in stream.documents]
    common = {
        "TaskName": task, "RepetitionTime": TR,
        "TaskDescription": f"The language model {name} reads text; one volume per token.",
        "Model": name, "Architecture": site.architecture, "NeuronSite": site.kind,
        "HookedModules": site.module_template, "Layers": list(site.layers),
        "NeuronLayout": layout.to_dict(), "Tokenizer": type(tokenizer).__name__,
        "ModelDtype": str(next(lm.parameters()).dtype).replace("torch.", ""),
        "DataDtype": "float32", "BOS": bool(bos), "RunTokens": int(run_tokens),
        "SoftwareVersions": "; ".join(f"{k} {v}" for k, v in _versions().items()),
    }
    device_t = next(lm.parameters()).device
    # The transformer without its language-model head: the neurons are all inside it,
    # and the head's vocabulary projection is a fifth of a small model's forward cost.
    body = getattr(lm, "base_model", lm)
    bar = tqdm(total=len(stream), unit="tok", unit_scale=True, disable=not progress,
               desc=f"sub-{participant} task-{task}")
    # One writer thread saves run r (NIfTI, checksum) while the model reads run r + 1
    # into the other of two buffers: memory stays at two runs whatever the corpus, and
    # reusing the buffers spares the page faults of fresh 100 MB allocations.
    longest = max(stop - start for start, stop in runs)
    buffers, slot = [None, None], 0
    with bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm2nifti-write") as pool:
        pending = pool.submit(prepare)
        for r, (start, stop) in enumerate(runs, 1):
            if resume and writer.run_done(r, ext):
                result.skipped.append(r)
                bar.update(stop - start)
                continue
            if buffers[slot] is None:
                buffers[slot] = layout.empty_buffer(longest)
            buf = buffers[slot][: stop - start]  # its previous write was waited for below
            slot ^= 1
            ids = torch.as_tensor(stream.ids[start:stop]).reshape(1, -1).to(device_t)
            with torch.inference_mode(), Recorder(lm, site, buffer=buf):
                body(input_ids=ids, use_cache=False)
            sidecar = dict(common, Run=r, TokenRange=[int(start), int(stop)],
                           Documents=sorted({doc_ids[d] for d in stream.document[start:stop]},
                                            key=doc_ids.index))
            events = events_tsv(token_text[start:stop], stream.ids[start:stop],
                                [doc_ids[d] for d in stream.document[start:stop]],
                                stream.position[start:stop], tr=TR)
            pending.result()
            pending = pool.submit(writer.write_run, r, layout.buffer_to_img(buf, tr=TR),
                                  sidecar, events, ext)
            pending.add_done_callback(lambda f, n=stop - start: f.exception() or bar.update(n))
        pending.result()
    result.runs = [writer.bold_path(r, ext) for r in range(1, len(runs) + 1)]
    return result


def _label(value, what):
    from bids_llm.naming import label as bids_label

    try:
        return bids_label(value, what)
    except ValueError as exc:
        raise UsageError(f"{exc}: use letters and digits only") from None
