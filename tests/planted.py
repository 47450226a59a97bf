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


# ----------------------------------------------------------------------------- several readers
WORDS = ("river council storm market signal winter garden engine doctor planet music letter "
         "bridge forest number silver window travel summer crowd").split()


def reader_documents(n_documents=10, sentences=4, words_per_sentence=8, seed=0):
    """Documents of random words, sentences ending in a full stop (same text for every reader)."""
    from llm2nifti.acquisition.stimuli import Document

    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_documents):
        sents = [" ".join(rng.choice(WORDS, words_per_sentence)) + "." for _ in range(sentences)]
        docs.append(Document(f"doc{d:02d}", " ".join(sents).capitalize()))
    return docs


def trained_tokenizer(kind, documents):
    """An offline tokenizer trained on the documents: ``"bpe"`` (byte-level) or ``"wordpiece"``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [d.text for d in documents]
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=60, special_tokens=["[UNK]", "[CLS]", "[SEP]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[CLS]", eos_token="[SEP]",
                                   unk_token="[UNK]")


def word_latents(documents, n_latents=4, seed=0):
    """``{document_id: (words, n_latents)}`` heavy-tailed word-level signals."""
    from llm2nifti.acquisition.words import word_spans

    rng = np.random.default_rng(seed)
    return {d.id: rng.laplace(size=(len(word_spans(d.text)[2]), n_latents)) for d in documents}


def write_reader(root, participant, documents, tokenizer, latents, n_layers=4, width=48,
                 seed=0, noise=0.3, run_tokens=150, perm=None):
    """A participant whose layer ``k`` carries latent ``k`` of each token's word in 8 units.

    ``perm`` (a permutation of each layer's units) writes the same data with units reordered.
    Returns ``(layout, sets)``: the units of each planted network (global indices).
    """
    from llm2nifti.acquisition.stimuli import make_runs, tokenize_documents

    site = Site("mlp", "llama", "model.layers.{layer}.mlp.down_proj", "pre", width, n_layers)
    layout = NeuronLayout(site)
    rng = np.random.default_rng(seed)
    sets = [k * width + np.sort(rng.choice(width, 8, replace=False)) for k in range(n_layers)]
    stream = tokenize_documents(documents, tokenizer)
    X = noise * rng.standard_normal((len(stream), layout.n_neurons))
    for t in np.flatnonzero(stream.word >= 0):
        value = latents[documents[stream.document[t]].id][stream.word[t]]
        for k, idx in enumerate(sets):
            X[t, idx] += value[k % value.shape[0]] * np.linspace(1.0, 1.5, len(idx))
    if perm is not None:
        order = np.concatenate([k * width + perm for k in range(n_layers)])
        X = X[:, order]
        inverse = np.argsort(order)
        sets = [np.sort(inverse[s]) for s in sets]
    writer = DatasetWriter(root, participant, TASK, layout, name="planted readers")
    writer.init_dataset()
    writer.add_participant({"model": participant, "architecture": "llama", "n_layers": n_layers,
                            "neurons_per_layer": width, "n_parameters": 0, "weights_sha256": "0"})
    writer.write_layout()
    writer.write_documents([(d.id, d.text) for d in documents])
    ids = [d.id for d in documents]
    text = tokenizer.batch_decode([[int(i)] for i in stream.ids])
    for r, (a, b) in enumerate(make_runs(len(stream), run_tokens), 1):
        sidecar = {"TaskName": TASK, "RepetitionTime": 1.0, "NeuronLayout": layout.to_dict(),
                   "TokenRange": [a, b]}
        events = events_tsv(text[a:b], stream.ids[a:b], [ids[d] for d in stream.document[a:b]],
                            stream.position[a:b], spans=(stream.char_start[a:b],
                                                         stream.char_end[a:b], stream.word[a:b]))
        writer.write_run(r, layout.to_img(X[a:b].astype(np.float32), tr=1.0), sidecar, events)
    return layout, sets


def networks_table(path, layout, sets):
    """A ``networks.tsv`` naming each planted set ``FNxx`` (z = 5)."""
    from llm2nifti.neuronset import NeuronSet

    layer, neuron = layout.neurons()
    rows = [{"network": f"FN{i:02d}", "site": "mlp", "layer": int(layer[g]),
             "neuron": int(neuron[g]), "z": 5.0} for i, s in enumerate(sets) for g in s]
    import pandas as pd

    NeuronSet(pd.DataFrame(rows)).to_tsv(path)
    return path
