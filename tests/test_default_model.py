"""End to end on the real embedded default model (SmolLM2-135M-Instruct) and the Lee corpus."""

import nibabel as nib
import numpy as np
import torch
from click.testing import CliRunner

from bids_llm.dataset import Dataset, load_run
from bids_llm.events import read_events
from llm2nifti.cli.main import main
from llm2nifti.models import load_model
from llm2nifti.acquisition.recording import record
from llm2nifti.sites import resolve_site


def test_convert_default_model_end_to_end(tmp_path):
    out = tmp_path / "scan"
    r = CliRunner().invoke(main, ["convert", str(out), "--max-tokens", "300", "--run-tokens", "150",
                                  "--threads", "2", "-q"])
    assert r.exit_code == 0, r.output
    ds = Dataset(out)
    (row,) = ds.participants()
    assert row["participant_id"] == "sub-SmolLM2135MInstruct"
    assert (row["architecture"], row["n_layers"], row["neurons_per_layer"]) == ("llama", "30", "1536")
    assert 130e6 < int(row["n_parameters"]) < 140e6
    runs = ds.runs()
    assert [r.run for r in runs] == [1, 2] and runs[0].task == "lee"
    img = nib.load(runs[1].path)
    assert img.shape == (48, 32, 30, 150)

    model, tok = load_model()
    ids = read_events(runs[1].events_path)["token_id"].to_numpy()
    assert tok.decode(ids[:40]).count("<|im_start|>") <= 1
    X, neurons = load_run(runs[1])
    expected = record(model, resolve_site(model), ids)
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=1e-4)
    assert X.shape == (150, 46080) and neurons["layer"].max() == 29

    # real pretrained weights: the news text is far from random for this model
    with torch.no_grad():
        loss = model(torch.tensor(ids)[None], labels=torch.tensor(ids)[None]).loss
    assert float(torch.exp(loss)) < 100  # a random model of this vocabulary scores ~49,000


def test_default_model_on_the_example_task_files():
    """The three task-file formats on the real model: far above chance, and F1 >= exact match."""
    from pathlib import Path

    from llm2nifti.intervention.evaluation import Evaluator
    from llm2nifti.intervention.tasks import load_task

    tasks = Path(__file__).resolve().parents[1] / "examples" / "tasks"
    model, tok = load_model()
    mc = Evaluator(model, tok, task=load_task(tasks / "capitals_choice.jsonl")).score()
    assert mc.accuracy >= 0.75  # chance: 1/3
    labelled = load_task(tasks / "sentiment.jsonl", template="Review: {text}\nSentiment:")
    assert Evaluator(model, tok, task=labelled).score().accuracy > 0.5  # chance: 1/2
    qa = Evaluator(model, tok, task=load_task(tasks / "capitals_questions.jsonl",
                                              max_new_tokens=6)).score()
    assert qa.exact.mean() >= 0.25 and np.all(qa.f1 >= qa.exact)
