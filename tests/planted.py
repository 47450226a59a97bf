"""Datasets with planted networks: known neuron sets, mixed over tokens, plus noise.

Each network is a fixed set of neurons (spread over layers) that share one
time course; the runs are written through the same NeuronLayout and dataset
writer as a real scan, so recovering the sets exactly tests the whole
neuron -> voxel -> nilearn -> voxel -> neuron path.
"""

from __future__ import annotations

import numpy as np

from bids_llm.dataset import DatasetWriter
from bids_llm.events import events_tsv
from llm2nifti.layout import NeuronLayout
from llm2nifti.sites import Site

PARTICIPANT = "toy"
TASK = "planted"


def toy_layout(n_layers=3, width=64):
    site = Site("mlp", "llama", "model.layers.{layer}.mlp.down_proj", "pre", width, n_layers)
    return NeuronLayout(site)


def planted_sets(layout, n_networks=4, size=10, seed=0):
    """Disjoint random neuron sets (layer-major global indices), sorted."""
    rng = np.random.default_rng(seed)
    pick = rng.permutation(layout.n_neurons)[: n_networks * size]
    return [np.sort(pick[i * size:(i + 1) * size]) for i in range(n_networks)]


def planted_activations(layout, sets, n_tokens, noise=0.3, seed=0, signs=None, absent=()):
    """``(T, n_neurons)``: each set follows its own heavy-tailed time course, plus noise.

    Sets whose index is in ``absent`` stay silent (noise only).
    """
    rng = np.random.default_rng(seed)
    X = noise * rng.standard_normal((n_tokens, layout.n_neurons))
    for i, idx in enumerate(sets):
        course = rng.laplace(size=n_tokens)
        if i in absent:
            continue
        weights = rng.uniform(1.0, 1.5, size=len(idx))
        if signs is not None:
            weights = weights * signs[i]
        X[:, idx] += np.outer(course, weights)
    return X.astype(np.float32)


def make_planted(root, n_layers=3, width=64, n_networks=4, size=10, n_runs=3, n_tokens=200,
                 noise=0.3, seed=0, signs=None, absent=None):
    """Write a planted dataset; return ``(layout, sets)`` with sets as global indices.

    ``absent`` maps a run number to the networks silent in that run.
    """
    layout = toy_layout(n_layers, width)
    sets = planted_sets(layout, n_networks, size, seed)
    writer = DatasetWriter(root, PARTICIPANT, TASK, layout, name="planted networks")
    writer.init_dataset()
    writer.add_participant({"model": "toy", "architecture": "llama", "n_layers": n_layers,
                            "neurons_per_layer": width, "n_parameters": 0, "weights_sha256": "0"})
    writer.write_layout()
    for r in range(1, n_runs + 1):
        X = planted_activations(layout, sets, n_tokens, noise=noise, seed=seed * 100 + r, signs=signs,
                                absent=(absent or {}).get(r, ()))
        sidecar = {"TaskName": TASK, "RepetitionTime": 1.0, "NeuronLayout": layout.to_dict()}
        events = events_tsv(["a"] * n_tokens, [0] * n_tokens, ["d"] * n_tokens,
                            list(range(n_tokens)), tr=1.0)
        writer.write_run(r, layout.to_img(X, tr=1.0), sidecar, events)
    return layout, sets


def recovered_exactly(nset, layout, sets):
    """Planted sets each found as one network with exactly the same neurons."""
    found = [set(nset.select(n).global_index(layout).tolist()) for n in nset.names]
    return all(any(set(s.tolist()) == f for f in found) for s in sets)
