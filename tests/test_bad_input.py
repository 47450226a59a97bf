"""Bad input on every command: one line naming the problem and what to do, exit 2, nothing written.

Each case builds what it needs under one shared folder; the folder's files (names, sizes,
modification times) must be the same before and after the command.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from llm2nifti.cli.main import main

from conftest import TEXT, byte_tokenizer, tiny_llama


class World:
    """Inputs shared by the cases: a tiny model, a scan, components, tables and broken files."""

    def __init__(self, root, model_dir):
        from llm2nifti.acquisition.convert import scan

        self.root = root
        self.model = model_dir
        self.text = root / "text.txt"
        self.text.write_text(TEXT)
        res = scan(root / "ds", "tinyllama", self.text, run_tokens=100, progress=False,
                   loaded=(tiny_llama(), byte_tokenizer()), threads=1)
        self.ds, self.layout = res.root, res.layout
        self.run1 = res.runs[0]
        rng = np.random.default_rng(0)
        self.maps = self.img(rng.standard_normal((4, self.layout.n_neurons)), "maps.nii")
        self.networks = self._networks()

    def path(self, name):
        return self.root / name

    def img(self, maps, name):
        buf = self.layout.empty_buffer(len(maps))
        buf[:] = np.asarray(maps).reshape(buf.shape)
        path = self.path(name)
        nib.save(self.layout.buffer_to_img(buf, tr=1.0), str(path))
        return path

    def raw(self, name, data):
        path = self.path(name)
        path.write_bytes(data)
        return path

    def file(self, name, text):
        path = self.path(name)
        path.write_text(text)
        return path

    def _networks(self):
        rows = ["network\tsite\tlayer\tneuron\tz"] + [f"FN00\tmlp\t{l}\t{n}\t4.0" for l in (0, 1)
                                                       for n in range(5)]
        return self.file("networks.tsv", "\n".join(rows) + "\n")

    def table(self, name, rows, header="network\tsite\tlayer\tneuron\tz"):
        return self.file(name, "\n".join([header, *rows]) + "\n")

    def dataset_copy(self, name):
        dst = self.path(name)
        shutil.copytree(self.ds, dst)
        return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    return World(tmp_path_factory.mktemp("bad"), tiny_model_dir)


# ------------------------------------------------------------------ inputs
def _truncated_run(w):
    ds = w.dataset_copy("ds-truncated")
    bold = next(ds.rglob("*run-01_bold.nii"))
    bold.write_bytes(bold.read_bytes()[:1000])
    return ds


def _tampered_run(w):
    ds = w.dataset_copy("ds-tampered")
    bold = next(ds.rglob("*run-01_bold.nii"))
    data = bytearray(bold.read_bytes())
    data[-8:] = b"\x00\x00\x80\x7f" * 2  # two voxels become +Inf; the header is intact
    bold.write_bytes(bytes(data))
    return ds


def _foreign_grid(w):
    img = nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4))
    path = w.path("foreign.nii")
    nib.save(img, str(path))
    return path


def _three_d(w):
    img = nib.load(str(w.maps))
    path = w.path("three-d.nii")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), str(path))
    return path


def _remote_code_model(w):
    path = w.path("remote-code-model")
    path.mkdir()
    (path / "config.json").write_text(json.dumps({
        "model_type": "mystery", "architectures": ["MysteryForCausalLM"],
        "auto_map": {"AutoConfig": "modeling.MysteryConfig",
                     "AutoModelForCausalLM": "modeling.MysteryForCausalLM"}}))
    (path / "modeling.py").write_text("raise SystemExit('remote code ran')\n")
    return path


def _corrupt_safetensors(w):
    path = w.path("corrupt-model")
    shutil.copytree(w.model, path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    return path


def _pickle_only_model(w):
    """A folder whose only weights are a pickle that would run code when unpickled."""
    import pickle

    path = w.path("pickle-model")
    shutil.copytree(w.model, path)
    (path / "model.safetensors").unlink()
    marker = w.path("pickle-ran")

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "unpickled"))

    (path / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Payload()}))
    return path


def _bigbench(w, name, spec):
    folder = w.path(name)
    folder.mkdir()
    (folder / "task.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return folder / "task.json"


def _taskfile(w, name, records):
    path = w.path(name)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _convert(*extra):
    return lambda w: ["convert", w.path("out"), "--model", w.model, "--text", w.text, *extra]


def _conv_label(label):
    return _convert("--participant", label)


def _decompose(*extra, ds=None):
    return lambda w: ["decompose", ds(w) if ds else w.ds, "--backend", "fast", "-k", "2",
                      "--n-init", "1", *extra]


def _networks(comp, *extra):
    return lambda w: ["networks", comp(w), "--dataset", w.ds, "--output", w.path("net-out"), *extra]


def _evaluate(table, *extra, out=None):
    return lambda w: ["evaluate", table(w), "--dataset", w.ds, "--model", w.model,
                      "--output", out(w) if out else w.path("eval-out"), "--heldout", w.text,
                      "--eval-task", "none", "--allow-overlap", "--seeds", "1", *extra]


def _prune(table, *extra, out="pruned"):
    return lambda w: ["prune", table(w), "--output", w.path(out) if isinstance(out, str) else out(w),
                      "--model", w.model, "--heldout", w.text, *extra]


def _localize(stimuli, *extra):
    return lambda w: ["localize", w.path("loc-out"), "--model", w.model, "--stimuli", stimuli(w), *extra]


def _conditions_table(w):
    return w.file("conds.tsv", "id\ttext\tcondition\na\tSome words.\tsentences\n"
                  "b\tWords some.\tnonwords\n")


CASES = [
    # convert
    ("convert-label-dotdot", _conv_label(".."), "letters and digits"),
    ("convert-label-parent", _conv_label("../x"), "letters and digits"),
    ("convert-label-slash", _conv_label("a/b"), "letters and digits"),
    ("convert-label-nonascii", _conv_label("modèle"), "letters and digits"),
    ("convert-label-long", _conv_label("a" * 300), "at most 64"),
    ("convert-task-parent", _convert("--task", "../x"), "letters and digits"),
    ("convert-output-is-file", lambda w: ["convert", w.text, "--model", w.model, "--text", w.text],
     "is a file"),
    ("convert-text-missing", _convert("--text", "no-such.txt"), "not found"),
    ("convert-table-no-text-column", lambda w: ["convert", w.path("out"), "--model", w.model,
                                                "--text", w.file("t.jsonl", '{"id": 1}\n')],
     "text"),
    ("convert-site-unknown", _convert("--site", "heads"), "--site"),
    ("convert-former-neurons-unknown", _convert("--neurons", "heads"), "--neurons"),
    ("convert-dtype-unknown", _convert("--dtype", "int3"), "--dtype"),
    ("convert-device-unknown", _convert("--device", "tpu"), "device"),
    ("convert-corrupt-safetensors", lambda w: ["convert", w.path("out"), "--model",
                                               _corrupt_safetensors(w), "--text", w.text],
     "cannot load model"),
    ("convert-pickle-only", lambda w: ["convert", w.path("out"), "--model", _pickle_only_model(w),
                                       "--text", w.text], "pytorch_model.bin"),
    ("convert-remote-code", lambda w: ["convert", w.path("out"), "--model", _remote_code_model(w),
                                       "--text", w.text], "--trust-remote-code"),
    ("convert-layers-bad", _convert("--layers", "1-x"), "layer"),
    # sites
    ("sites-missing-model", lambda w: ["sites", w.path("nope")], "not found"),
    ("sites-folder-without-config", lambda w: ["sites", w.path("empty-dir-sites")], "config.json"),
    # decompose
    ("decompose-not-a-dataset", lambda w: ["decompose", w.path("empty-dir")], "not a dataset"),
    ("decompose-truncated-run", _decompose(ds=_truncated_run), "truncated"),
    ("decompose-tampered-run", _decompose(ds=_tampered_run), "checksum"),
    ("decompose-k-zero", _decompose("-k", "0"), "at least 1"),
    ("decompose-k-too-large", _decompose("-k", "100000"), "tokens"),
    ("decompose-n-init-zero", _decompose("--n-init", "0"), "at least 1"),
    ("decompose-unknown-participant", _decompose("--participant", "ghost"), "no runs"),
    ("decompose-unknown-site", _decompose("--site", "heads"), "site"),
    ("decompose-bad-runs", _decompose("--runs", "x"), "run numbers"),
    ("decompose-desc-parent", _decompose("--desc", "../x"), "letters and digits"),
    # networks
    ("networks-missing-image", _networks(lambda w: w.path("none.nii")), "not found"),
    ("networks-truncated-image", _networks(lambda w: w.raw("trunc.nii", w.maps.read_bytes()[:1000])),
     "components image"),
    ("networks-not-nifti", _networks(lambda w: w.file("text.nii", "hello")), "NIfTI"),
    ("networks-nan", _networks(lambda w: w.img(np.full((2, w.layout.n_neurons), np.nan), "nan.nii")),
     "NaN"),
    ("networks-inf", _networks(lambda w: w.img(np.where(np.arange(w.layout.n_neurons) == 3, np.inf, 1.0)
                                               [None].repeat(2, 0), "inf.nii")), "NaN or Inf"),
    ("networks-all-zero", _networks(lambda w: w.img(np.zeros((2, w.layout.n_neurons)), "zero.nii")),
     "constant"),
    ("networks-3d", _networks(_three_d), "4D"),
    ("networks-foreign-grid", _networks(_foreign_grid), "grid"),
    ("networks-negative-threshold", _networks(lambda w: w.maps, "--threshold", "-1"), "threshold"),
    ("networks-top-k-zero", _networks(lambda w: w.maps, "--top-k", "0"), "top-k"),
    ("networks-output-is-file", lambda w: ["networks", w.maps, "--dataset", w.ds, "--output", w.text],
     "is a file"),
    # recurrence
    ("recurrence-iou-above-one", lambda w: ["recurrence", w.ds, "--iou-threshold", "1.5"], "IoU"),
    ("recurrence-negative-seeds", lambda w: ["recurrence", w.ds, "--n-seeds", "-1"], "n-seeds"),
    ("recurrence-foreign-templates", lambda w: ["recurrence", w.ds, "--templates", _foreign_grid(w)],
     "grid"),
    # evaluate
    ("evaluate-missing-columns", _evaluate(lambda w: w.table("nocol.tsv", ["FN00\t1"], "network\tlayer")),
     "column"),
    ("evaluate-layer-99", _evaluate(lambda w: w.table("l99.tsv", ["FN00\tmlp\t99\t1\t4"])), "layer"),
    ("evaluate-negative-neuron", _evaluate(lambda w: w.table("neg.tsv", ["FN00\tmlp\t0\t-3\t4"])),
     "neuron"),
    ("evaluate-neuron-out-of-range", _evaluate(lambda w: w.table("big.tsv", ["FN00\tmlp\t0\t9999\t4"])),
     "neuron"),
    ("evaluate-non-integer-neuron", _evaluate(lambda w: w.table("str.tsv", ["FN00\tmlp\t0\tabc\t4"])),
     "integer"),
    ("evaluate-seeds-zero", _evaluate(lambda w: w.networks, "--seeds", "0"), "--seeds"),
    ("evaluate-unknown-ablation", _evaluate(lambda w: w.networks, "--ablation", "median"),
     "unknown ablation"),
    ("evaluate-bigbench-not-json", _evaluate(lambda w: w.networks, "--bigbench",
                                             lambda w: _bigbench(w, "bb1", "{not json")), "BIG-bench"),
    ("evaluate-bigbench-no-examples", _evaluate(lambda w: w.networks, "--bigbench",
                                                lambda w: _bigbench(w, "bb2", {"examples": []})),
     "no multiple-choice"),
    ("evaluate-bigbench-malformed", _evaluate(lambda w: w.networks, "--bigbench",
                                              lambda w: _bigbench(w, "bb3", {"examples": "rm -rf /"})),
     "examples"),
    ("evaluate-bigbench-bad-scores", _evaluate(lambda w: w.networks, "--bigbench", lambda w: _bigbench(
        w, "bb4", {"examples": [{"input": "x", "target_scores": {"a": "high", "b": 0}}]})), "target_scores"),
    ("evaluate-task-no-format", _evaluate(lambda w: w.networks, "--eval-task", lambda w: _taskfile(
        w, "t1.jsonl", [{"text": "a"}])), "match no task format"),
    ("evaluate-task-missing-label", _evaluate(lambda w: w.networks, "--eval-task", lambda w: _taskfile(
        w, "t2.jsonl", [{"text": "a", "label": "x"}, {"text": "b"}])), "missing label"),
    ("evaluate-task-multi-token-labels", _evaluate(lambda w: w.networks, "--eval-task", lambda w: _taskfile(
        w, "t3.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]),
        "--label-words", "x=yes,y=no"), "not single tokens"),
    ("evaluate-task-unknown", _evaluate(lambda w: w.networks, "--eval-task", "sst2"), "unknown task"),
    ("evaluate-k-beyond-tokens", _evaluate(lambda w: w.networks, "--k", "100000"), "exceeds the"),
    ("evaluate-k-not-whole", _evaluate(lambda w: w.networks, "--k", "10.5"), "whole numbers"),
    ("evaluate-output-is-file", _evaluate(lambda w: w.networks, out=lambda w: w.text), "is a file"),
    ("evaluate-missing-table", _evaluate(lambda w: w.path("none.tsv")), "not found"),
    # prune
    ("prune-output-exists", _prune(lambda w: w.networks, out=lambda w: w.ds), "exists"),
    ("prune-residual-site", _prune(lambda w: w.table("res.tsv", ["FN00\tresidual\t0\t1\t4"])), "MLP"),
    ("prune-layer-99", _prune(lambda w: w.table("p99.tsv", ["FN00\tmlp\t99\t1\t4"])), "layer"),
    ("prune-missing-table", _prune(lambda w: w.path("none.tsv")), "not found"),
    # localize
    ("localize-no-condition", _localize(lambda w: w.file("plain.tsv", "id\ttext\na\tSome words.\n")),
     "no condition column"),
    ("localize-unknown-condition", _localize(_conditions_table, "-c", "sentences - pictures"),
     "unknown condition(s) pictures"),
    ("localize-bad-condition-name", _localize(lambda w: w.file(
        "badcond.tsv", "id\ttext\tcondition\na\tSome words.\tsent ences\n")), "letters and digits"),
    ("localize-top-zero", _localize(_conditions_table, "--top", "0"), "percentage"),
    ("localize-task-without-conditions", lambda w: ["localize", w.ds, "--task", "text"],
     "no trial_type column"),
    # connectivity
    ("connectivity-foreign-grid", lambda w: ["connectivity", _foreign_grid(w), "-d", w.ds], "grid"),
    ("connectivity-kind-unknown", lambda w: ["connectivity", w.maps, "-d", w.ds, "--kind", "coherence"],
     "unknown connectivity kind"),
    ("connectivity-missing-image", lambda w: ["connectivity", w.path("none.nii"), "-d", w.ds],
     "not found"),
    # report
    ("report-unknown-participant", lambda w: ["report", w.ds, "--participant", "nobody"],
     "no participant 'nobody'"),
    ("report-not-an-evaluation", lambda w: ["report", w.ds, "--evaluation", w.path("empty-dir")],
     "no evaluation.json"),
]


def _snapshot(root):
    return {p.relative_to(root): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def _resolve(args, w):
    return [str(a(w)) if callable(a) else str(a) for a in args]


@pytest.mark.parametrize("name,build,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, name, build, message):
    (world.root / "empty-dir").mkdir(exist_ok=True)
    (world.root / "empty-dir-sites").mkdir(exist_ok=True)
    args = _resolve(build(world), world)  # may create the case's inputs
    before = _snapshot(world.root)
    r = CliRunner().invoke(main, args + (["-q"] if args[0] in ("convert", "evaluate") else []))
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2, (args, r.output, r.exception)
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert message in lines[0], lines[0]
    assert "Traceback" not in r.output
    assert _snapshot(world.root) == before, "something was written"
    assert not world.path("pickle-ran").exists(), "a pickle was unpickled"


def test_there_are_at_least_40_cases_over_every_command():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
    assert {c[0].split("-")[0] for c in CASES} >= {"convert", "sites", "decompose", "networks",
                                                     "recurrence", "evaluate", "prune", "localize",
                                                     "connectivity", "report"}


@pytest.mark.parametrize("code,message", [(errno.ENOSPC, "No space left on device"),
                                          (errno.EROFS, "Read-only file system")])
@pytest.mark.parametrize("command", ["convert", "decompose"])
def test_full_or_read_only_disk(world, monkeypatch, tmp_path, code, message, command):
    import bids_llm.io

    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    if command == "convert":
        out = tmp_path / "out"
        args = ["convert", out, "--model", world.model, "--text", world.text, "-q"]
    else:
        out = world.dataset_copy(f"ds-{code}-{tmp_path.name}")
        args = ["decompose", out, "--backend", "fast", "-k", "2", "--n-init", "1", "-q"]
    def data_files():  # lock files aside
        return {p: v for p, v in _snapshot(out).items() if not p.name.endswith(".lock")} \
            if out.exists() else {}

    before = data_files()
    monkeypatch.setattr(bids_llm.io.os, "replace", refuse)
    r = CliRunner().invoke(main, [str(a) for a in args])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2, (r.output, r.exception)
    assert len(lines) == 1 and lines[0].startswith(f"Error: {message}") and "then run" in lines[0]
    assert data_files() == before, "a file was written"


# ------------------------------------------------------------------ memory
MEMORY_CASES = [
    ("convert", lambda w: ["convert", w.path("mem-out"), "--model", w.model, "--text", w.text, "-q"],
     "--run-tokens"),
    ("words", lambda w: ["words", w.ds], "--run-tokens"),
    ("decompose-fast", _decompose(), "fewer components"),
    ("decompose-nilearn", lambda w: ["decompose", w.ds, "-k", "2", "--n-init", "1"], "--backend fast"),
    ("networks", _networks(lambda w: w.maps), "fewer components"),
    ("recurrence", lambda w: ["recurrence", w.ds, "-k", "2", "--n-init", "1", "--n-seeds", "0"],
     "fewer components"),
    ("connectivity", lambda w: ["connectivity", w.maps, "-d", w.ds], "fewer components"),
    ("localize", _localize(_conditions_table), "--run-tokens"),
    ("evaluate-k", _evaluate(lambda w: w.networks, "--k", "2"), "fewer components"),
]


@pytest.mark.parametrize("name,build,advice", MEMORY_CASES, ids=[c[0] for c in MEMORY_CASES])
def test_memory_guard_refuses_before_writing(world, monkeypatch, name, build, advice):
    """Every command that loads images refuses work beyond a memory limit the test sets."""
    args = _resolve(build(world), world)
    monkeypatch.setenv("LLM2NIFTI_MEMORY_LIMIT", "20kB")
    before = _snapshot(world.root)
    r = CliRunner().invoke(main, args)
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2, (args, r.output, r.exception)
    assert len(lines) == 1 and "needs about" in lines[0], r.output
    assert "20.0 kB is available (LLM2NIFTI_MEMORY_LIMIT)" in lines[0], lines[0]
    assert advice in lines[0], lines[0]
    assert _snapshot(world.root) == before, "something was written"


def test_memory_estimate_grows_with_the_input_and_passes_under_a_roomy_limit(world, monkeypatch):
    from llm2nifti.memory import decomposition_bytes, run_shapes

    shapes = run_shapes(sorted(world.ds.rglob("*_bold.nii"))[:1])
    small = decomposition_bytes(shapes, 2, "fast")
    assert decomposition_bytes(shapes * 4, 2, "fast") > small  # more runs, more reductions
    assert decomposition_bytes([(t * 8, v) for t, v in shapes], 2, "fast") > 2 * small
    assert decomposition_bytes(shapes, 2, "nilearn") > small
    monkeypatch.setenv("LLM2NIFTI_MEMORY_LIMIT", "4GB")
    r = CliRunner().invoke(main, ["networks", str(world.maps), "--dataset", str(world.ds),
                                  "--output", str(world.path("roomy-net"))])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("command", ["networks", "connectivity"])
def test_a_raw_run_where_components_belong_is_refused(world, command):
    run = str(world.run1)
    args = (["networks", run, "--dataset", str(world.ds), "--output", str(world.path("raw-net"))]
            if command == "networks" else ["connectivity", run, "-d", str(world.ds)])
    before = _snapshot(world.root)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()
    assert len(line) == 1 and "is a converted run" in line[0] and "token volumes" in line[0], r.output
    assert "llm2nifti decompose" in line[0]
    assert _snapshot(world.root) == before


def test_memory_limit_that_is_not_a_size_is_one_line(world, monkeypatch):
    monkeypatch.setenv("LLM2NIFTI_MEMORY_LIMIT", "lots")
    r = CliRunner().invoke(main, _resolve(_decompose()(world), world))
    assert r.exit_code == 2 and "is not a size" in r.output


def test_memory_guard_of_fingerprint_reads(world, monkeypatch):
    """`fingerprint` reads each participant's runs: refused past the limit, nothing written."""
    from bids_llm.dataset import Dataset
    from llm2nifti.analysis.fingerprints import participant_networks
    from llm2nifti.errors import UsageError

    ds = Dataset(world.ds)
    run = ds.runs()[0]
    monkeypatch.setenv("LLM2NIFTI_MEMORY_LIMIT", "20kB")
    before = _snapshot(world.root)
    with pytest.raises(UsageError, match="needs about .* 20.0 kB is available"):
        participant_networks(ds, run.participant, run.task, "mlp")
    assert _snapshot(world.root) == before
