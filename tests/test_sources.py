"""Every form of --model: GGUF files and folders, Ollama's store, the Hugging Face cache, errors.

The real embedded GGUF file (SmolLM2-135M-Instruct, Q4_1) stands in for a user's own; it is
converted once into the llm2nifti cache and found there by its sha256 afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from llm2nifti.cli.main import main
from llm2nifti.sources import _embedded_gguf, resolve

from conftest import byte_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def gguf():
    return _embedded_gguf()


def _invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def _one_line_error(r, fragment):
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2, (r.output, r.exception)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], r.output


def _bold(out):
    return [np.asarray(nib.load(str(p)).dataobj) for p in sorted(out.glob("sub-*/func/*_bold.nii"))]


def _sidecar(out):
    return json.loads(next(out.rglob("*run-01_bold.json")).read_text())


def test_gguf_file_gives_the_default_models_voxels(tmp_path, gguf):
    common = ["--max-tokens", 40, "--run-tokens", 40, "--threads", 2, "-q"]
    assert _invoke("convert", tmp_path / "default", *common).exit_code == 0
    r = _invoke("convert", tmp_path / "file", "--model", gguf, *common)
    assert r.exit_code == 0, r.output
    a, b = _bold(tmp_path / "default"), _bold(tmp_path / "file")
    assert len(a) == len(b) == 1 and np.array_equal(a[0], b[0])
    src = _sidecar(tmp_path / "file")["ModelSource"]
    assert src["Format"] == "gguf" and src["Quantization"] == "Q4_1"
    assert src["Dequantized"] == "float32" and src["File"] == str(gguf)
    assert src["SHA256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    record = json.loads(next((tmp_path / "file" / "code").rglob("*_convert.json")).read_text())
    assert record["source"]["SHA256"] == src["SHA256"]


def _ollama_store(root, gguf, name="smol", tag="latest", blob=True):
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"}]}))
    (root / "blobs").mkdir(exist_ok=True)
    if blob:
        (root / "blobs" / f"sha256-{digest}").symlink_to(gguf)
    return root


def test_ollama_name_resolves_in_the_store_and_converts(tmp_path, gguf):
    store = _ollama_store(tmp_path / "ollama", gguf)
    env = {"OLLAMA_MODELS": str(store)}
    r = _invoke("convert", tmp_path / "ds", "--model", "ollama:smol", "--max-tokens", 20, "-q",
                env=env)
    assert r.exit_code == 0, r.output
    src = _sidecar(tmp_path / "ds")["ModelSource"]
    assert src["Format"] == "ollama" and src["Quantization"] == "Q4_1"
    assert (tmp_path / "ds" / "sub-ollamasmol").is_dir()
    _one_line_error(_invoke("sites", "ollama:llama3:8b", env=env), "it has smol:latest")


def test_ollama_manifest_with_missing_blob(tmp_path, gguf):
    store = _ollama_store(tmp_path / "ollama", gguf, blob=False)
    _one_line_error(_invoke("sites", "ollama:smol", env={"OLLAMA_MODELS": str(store)}),
                    "is missing")


def test_folder_with_two_gguf_files_needs_gguf_file(tmp_path, gguf):
    folder = tmp_path / "ggufs"
    folder.mkdir()
    for name in ("a-q4.gguf", "b-q8.gguf"):
        (folder / name).symlink_to(gguf)
    _one_line_error(_invoke("sites", folder), "a-q4.gguf, b-q8.gguf")
    r = _invoke("sites", folder, "--gguf-file", "b-q8.gguf")
    assert r.exit_code == 0 and "mlp\tpre" in r.output, r.output


def test_hugging_face_id_from_the_local_cache_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--tiny--llama" / "snapshots" / ("a" * 40)
    tiny_llama().save_pretrained(snapshot)
    byte_tokenizer().save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    src = resolve("tiny/llama")
    assert src.load == str(snapshot) and src.info["Format"] == "hf-cache"
    r = _invoke("sites", "tiny/llama")
    assert r.exit_code == 0 and "mlp\tpre" in r.output, r.output
    _one_line_error(_invoke("sites", "tiny/absent"), "hf download tiny/absent")


def _write_gguf(path, arch):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_model_errors(tmp_path, gguf, tiny_model_dir):
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model_dir, no_tok)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (no_tok / name).unlink(missing_ok=True)
    _one_line_error(_invoke("sites", no_tok), "no tokenizer")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    _one_line_error(_invoke("sites", no_weights), "no weights")
    odd = _write_gguf(tmp_path / "odd.gguf", "rwkv6")
    _one_line_error(_invoke("sites", odd), "'rwkv6' model, which transformers cannot load")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(gguf.read_bytes()[:5000])
    _one_line_error(_invoke("convert", tmp_path / "out", "--model", truncated), "truncated")
    assert not (tmp_path / "out").exists()
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(os.urandom(64))
    _one_line_error(_invoke("sites", not_gguf), "not GGUF")
