"""Datasets of the shapes real text makes, each written by ``llm2nifti convert`` on tiny models.

Every shape is a dataset of two participants (``a`` and ``b``: two random initialisations of the
same tiny Llama) that read the same text, so that every command that reads runs, comparisons
included, can be run on it. The models are built from a config and saved as folders; the only
planted structure is in the weights:

- ``narrow``: 2 layers of 8 MLP units (16 units, fewer than the default k = 20);
- ``dead``: half the MLP units of every layer have a zero gate row, so they are exactly 0 on
  every token (silu(0) * up = 0);
- ``overflow``: one layer's gate and up projections are scaled so that, run in float16, its
  units overflow to inf (and NaN), as a large model in half precision can. ``convert`` refuses
  such a run; the dataset of this shape holds one all the same (participant ``a``'s run 2,
  recorded in float16 and written with convert's writer), as an older version or another tool
  could have written it, so that every reader is tested on it.

A run of one repeated token with no BOS in it has every unit constant: each position attends
to identical values, so every layer sees the same input at every position.
"""

from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner
from conftest import TEXT, byte_tokenizer, tiny_llama

from llm2nifti.cli.main import main

K = 20  # the command line's default number of components

# Ten short news items, 137 words: enough common words for a comparison's null (50).
TEXT = TEXT + (
    "A small museum opened a new wing for old maps and ship models.\n"
    "The train to the coast was late because of a fallen tree on the line.\n"
    "Farmers in the valley expect a good harvest after a warm and wet spring.\n"
    "The school choir sang at the town hall to raise money for new books.\n"
    "Police closed the market square for a parade on Saturday morning.\n"
    "A young pilot landed a light plane safely on a field near the river.\n"
)

# shape: (model kind, text, convert options)
SHAPES = {
    "a last run of 1 token": ("base", TEXT, ["--run-tokens", "128", "--max-tokens", "641"]),
    "every run shorter than k": ("base", TEXT, ["--run-tokens", "16"]),
    "a single run": ("base", TEXT, ["--run-tokens", "512", "--max-tokens", "512"]),
    "a single document": ("base", TEXT.replace("\n", " "), ["--run-tokens", "256"]),
    "fewer units than k": ("narrow", TEXT, ["--run-tokens", "256"]),
    "dead units in every run": ("dead", TEXT, ["--run-tokens", "256"]),
    "a run in which every unit is constant": (
        "base", TEXT.split("\n")[0] + " " + "a" * 300 + "\n" + TEXT, ["--run-tokens", "128"]),
    "inf and NaN from float16": ("overflow", TEXT, ["--run-tokens", "256"]),
    "runs of very different lengths": ("base", TEXT, ["--run-tokens", "480", "--max-tokens", "500"]),
}


def tiny_model(kind, seed):
    """The tiny Llama of ``kind`` (see the module's docstring), in float32."""
    if kind == "narrow":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=8, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          bos_token_id=256, eos_token_id=257)
        return LlamaForCausalLM(cfg).eval()
    model = tiny_llama(seed=seed)
    with torch.no_grad():
        if kind == "dead":
            for layer in model.model.layers:
                layer.mlp.gate_proj.weight[::2] = 0.0
        elif kind == "overflow":
            model.model.layers[1].mlp.gate_proj.weight.mul_(1e3)
            model.model.layers[1].mlp.up_proj.weight.mul_(1e4)
    return model


def save_model(folder, kind, seed):
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        tiny_model(kind, seed).save_pretrained(folder)
        byte_tokenizer().save_pretrained(folder)
    return folder


def build(root, shape, models):
    """Convert the shape's text with participants ``a`` and ``b``; return the dataset folder."""
    kind, text, options = SHAPES[shape]
    root = Path(root)
    text_file = root.parent / f"{root.name}.txt"
    text_file.write_text(text, encoding="utf-8")
    for participant, seed in (("a", 0), ("b", 1)):
        model = save_model(Path(models) / f"{kind}-{seed}", kind, seed)
        r = CliRunner().invoke(main, ["convert", str(root), "--model", str(model), "--text",
                                      str(text_file), "--participant", participant, "--task",
                                      "text", "--threads", "1", "-q", *options])
        assert r.exit_code == 0, r.output
    if kind == "overflow":
        _overflow_run(root, Path(models) / f"{kind}-0", run=2)
    return root


def _overflow_run(root, model_dir, run):
    """Record participant ``a``'s run ``run`` again in float16 and write it over the first."""
    import json

    import nibabel as nib
    import numpy as np
    from transformers import AutoModelForCausalLM

    from bids_llm.dataset import Dataset, DatasetWriter
    from llm2nifti.acquisition.recording import record

    ds = Dataset(root)
    layout = ds.layout("a")
    (old,) = ds.runs(participant="a", run=run)
    ids = [int(i) for i in old.events()["token_id"]]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16).eval()
    X = record(model, layout.site, ids)
    assert not np.isfinite(X).all()
    img = layout.buffer_to_img(layout.fill_buffer(layout.empty_buffer(len(X)), X), tr=1.0)
    writer = DatasetWriter(root, "a", "text", layout)
    sidecar = json.loads(writer.sidecar_path(run).read_text())
    writer.write_run(run, img, sidecar, writer.events_path(run).read_text())
    assert not np.isfinite(np.asarray(nib.load(old.path).dataobj)).all()
