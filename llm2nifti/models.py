"""Load the model to scan (wherever :mod:`llm2nifti.sources` finds it), set threads, hash weights."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import warnings

import torch
from safetensors import SafetensorError

from .errors import UsageError
from .sources import DEFAULT_MODEL, cache_dir, resolve

__all__ = ["DEFAULT_MODEL", "load_model", "load_skeleton", "cache_dir", "model_label",
           "weights_hash", "set_threads"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def set_threads(n=None):
    """Set torch's intra-op threads (default: the CPUs this process may use)."""
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


def _pickle_error(name):
    return UsageError(
        f"model {name} holds pickled weights (pytorch_model.bin) that torch.load(weights_only=True) "
        "refuses, and they are never unpickled otherwise: convert a trusted copy to safetensors")


def _load_error(name, exc):
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UsageError(f"cannot load model {name!r} ({first}): pass a local folder with config.json "
                      "and weights, or a Hugging Face id available offline or online")


def _resolve_dtype(dtype):
    if dtype in (None, "auto"):
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype)]
    except KeyError:
        raise UsageError(f"unknown dtype {dtype!r}: choose auto, {', '.join(_DTYPES)}") from None


def _resolve_device(device):
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(str(device)).type
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked, but torch sees no GPU: use --device cpu")
    return str(device)


def load_model(model=None, device="cpu", dtype="auto", trust_remote_code=False, cache=None,
               gguf_file=None):
    """Load a causal language model and its tokenizer, in eval mode.

    Parameters
    ----------
    model : str or path, optional
        None for the embedded default model; else a local folder, a ``.gguf`` file (or a
        folder of them), ``ollama:NAME[:TAG]``, or a Hugging Face id (see
        :mod:`llm2nifti.sources`).
    device : {"cpu", "cuda", "auto"} or str
    dtype : {"auto", "float32", "float16", "bfloat16"}
        Weights' dtype (``auto`` keeps the checkpoint's; GGUF files are dequantized to float32).
    trust_remote_code : bool
        Allow a model's own Python code to run. Off unless you trust the model.
    cache : path, optional
        Cache folder for converted GGUF files (see :func:`cache_dir`).
    gguf_file : str, optional
        Which GGUF file of a folder holding several.

    Returns
    -------
    model : transformers.PreTrainedModel
        With ``llm2nifti_source_``: the provenance record of :class:`llm2nifti.sources.Source`.
    tokenizer : transformers.PreTrainedTokenizerBase
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype)
    src = resolve(model, gguf_file=gguf_file, cache=cache, trust_remote_code=trust_remote_code)
    # Weights are read from local files in about a second: no progress bar of transformers' own
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        # Warnings are shown once the model has loaded: a load that fails says why in one line.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tok = AutoTokenizer.from_pretrained(src.load, trust_remote_code=trust_remote_code)
            lm = AutoModelForCausalLM.from_pretrained(src.load, dtype=dtype,
                                                      trust_remote_code=trust_remote_code)
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except UsageError:
        raise
    except pickle.UnpicklingError:
        raise _pickle_error(src.name) from None
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise _load_error(src.name, exc) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    lm.to(device)
    lm.eval()
    lm.config.name_or_path = src.name
    lm.llm2nifti_source_ = dict(src.info)
    return lm, tok


def load_skeleton(model=None, trust_remote_code=False, cache=None, gguf_file=None):
    """The model's architecture without its weights (on torch's meta device).

    Enough to resolve neuron sites of a large model in a second: nothing is
    allocated and no weights are read (a GGUF file is converted once first).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    src = resolve(model, gguf_file=gguf_file, cache=cache, trust_remote_code=trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(src.load, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(src.name, exc) from None
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    lm.config.name_or_path = src.name
    return lm


def model_label(name):
    """BIDS participant label (alphanumeric) for a model name or path."""
    base = str(name).rstrip("/\\").replace("\\", "/").split("/")[-1]
    label = "".join(ch for ch in base if ch.isascii() and ch.isalnum())
    if not label or len(label) > 64:
        raise UsageError(f"cannot derive a participant label from model name {name!r}: pass --participant")
    return label


def weights_hash(model, n_chars=16):
    """sha256 over the model's parameters (names, shapes, bytes), for participants.tsv."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            t = p.detach().to("cpu").contiguous()
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy())  # no copy; 0-d too
    return h.hexdigest()[:n_chars]
