"""Several writers into one dataset: every row kept, one writer per participant and task."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from bids_llm.dataset import Dataset, DatasetWriter, _read_tsv
from bids_llm.io import TMP_PREFIX
from llm2nifti.cli.main import main
from llm2nifti.layout import NeuronLayout
from llm2nifti.sites import Site

from conftest import TEXT


def _layout():
    site = Site(kind="mlp", architecture="llama", module_template="model.layers.{layer}.mlp.down_proj",
                hook="pre", width=8, n_layers=2)
    return NeuronLayout(site)


def _write_runs(root, task, n, barrier):
    layout = _layout()
    w = DatasetWriter(root, "m", task, layout)
    w.init_dataset()
    w.add_participant({"model": "m"})
    barrier.wait()
    for r in range(1, n + 1):
        buf = layout.empty_buffer(3)
        buf[:] = r
        w.write_run(r, layout.buffer_to_img(buf, tr=1.0), {"TaskName": task, "RepetitionTime": 1.0},
                    "onset\tduration\n0\t1\n", ".nii")


def test_concurrent_writers_of_one_participant_keep_every_scans_row(tmp_path):
    tasks, n = ["a", "b", "c", "d"], 25
    barrier = threading.Barrier(len(tasks))
    threads = [threading.Thread(target=_write_runs, args=(tmp_path, t, n, barrier)) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = _read_tsv(tmp_path / "sub-m" / "sub-m_scans.tsv")
    assert len(rows) == len(tasks) * n
    assert len(Dataset(tmp_path).runs(participant="m")) == len(tasks) * n
    assert [r["participant_id"] for r in _read_tsv(tmp_path / "participants.tsv")] == ["sub-m"]


def test_concurrent_participants_all_listed(tmp_path):
    layout = _layout()
    labels = [f"m{i}" for i in range(6)]
    barrier = threading.Barrier(len(labels))

    def add(label):
        barrier.wait()
        for _ in range(10):
            DatasetWriter(tmp_path, label, "t", layout).add_participant({"model": label})

    threads = [threading.Thread(target=add, args=(lab,)) for lab in labels]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [r["participant_id"] for r in _read_tsv(tmp_path / "participants.tsv")]
    assert ids == [f"sub-{lab}" for lab in labels]


def _cli(*args):
    return [sys.executable, "-c", "from llm2nifti.cli.main import main; main()", *map(str, args)]


def test_two_converts_of_different_tasks_into_one_folder_both_succeed(tmp_path, tiny_model_dir):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT * 3)
    b.write_text(TEXT[::-1] * 3)
    out = tmp_path / "ds"
    common = ["--model", tiny_model_dir, "--run-tokens", 16, "--threads", 1, "-q"]
    procs = [subprocess.Popen(_cli("convert", out, "--text", t, *common),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for t in (a, b)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ds = Dataset(out)
    runs = {t: len(ds.runs(participant="tinyllama", task=t)) for t in ("a", "b")}
    assert runs["a"] > 10 and runs["b"] > 10
    rows = _read_tsv(out / "sub-tinyllama" / "sub-tinyllama_scans.tsv")
    assert len(rows) == runs["a"] + runs["b"]
    assert not list(out.rglob(f"{TMP_PREFIX}*"))


def test_second_writer_of_same_participant_and_task_is_refused(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "ds"
    args = ["convert", str(out), "--model", str(tiny_model_dir), "--text", str(text_file), "-q"]
    holder = DatasetWriter(out, "tinyllama", "stories", _layout())
    with holder.exclusive():  # as a running convert holds it
        r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "another llm2nifti convert is writing sub-tinyllama task-stories" in lines[0]
    assert not list(out.rglob("*_bold.nii"))
    assert CliRunner().invoke(main, args).exit_code == 0  # released: the next one goes ahead


def test_other_writers_temporaries_are_kept(tmp_path):
    w = DatasetWriter(tmp_path, "m", "t", _layout())
    w.init_dataset()
    parent = os.getppid()  # alive for the whole test
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    live = tmp_path / f"{TMP_PREFIX}{parent}-participants.tsv"
    stale = tmp_path / f"{TMP_PREFIX}{dead}-participants.tsv"
    mine = tmp_path / f"{TMP_PREFIX}{os.getpid()}-README"
    for p in (live, stale, mine):
        p.write_text("x")
    w.clean_temporaries()
    assert live.exists() and not stale.exists() and not mine.exists()
