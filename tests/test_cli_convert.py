"""The command line as a user meets it: outputs, exit codes, one-line errors, interruption."""

import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from bids_llm.dataset import Dataset
from llm2nifti.cli.main import main

from conftest import TEXT


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_convert_local_folder_prints_where_and_how(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "ds"
    r = run("convert", out, "--model", tiny_model_dir, "--text", text_file, "--run-tokens", 64, "-q")
    assert r.exit_code == 0, r.output
    assert "Wrote 5 run(s)" in r.output and "canica_on_scan.py" in r.output
    assert len(Dataset(out).runs(participant="tinyllama", task="stories")) == 5


def test_sites_lists_counts(tiny_model_dir):
    r = run("sites", tiny_model_dir)
    assert r.exit_code == 0, r.output
    assert "mlp\tpre\tmodel.layers.{layer}.mlp.down_proj\t2\t128\t256" in r.output
    assert "residual\tpost\tmodel.layers.{layer}\t2\t64\t128" in r.output


def _bad_inputs(tmp_path, model_dir, text_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\x00\xff\x00binary")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x.txt").write_text("x")
    from transformers import OPTConfig, OPTForCausalLM

    opt = tmp_path / "opt"
    OPTForCausalLM(OPTConfig(vocab_size=258, hidden_size=32, num_hidden_layers=1, ffn_dim=64,
                             num_attention_heads=2, word_embed_proj_dim=32)).save_pretrained(opt)
    from conftest import byte_tokenizer
    byte_tokenizer().save_pretrained(opt)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    m = ["--model", model_dir]
    return [
        (["--model", tmp_path / "no-such-model"], "not found"),
        (["--model", no_weights], "cannot load model"),
        (["--model", opt], "unsupported architecture 'opt'"),
        (m + ["--text", empty], "holds no text"),
        (m + ["--text", binary], "looks binary"),
        (m + ["--text", latin], "--encoding"),
        (m + ["--text", text_file, "--layers", "5"], "unknown layer"),
        (m + ["--text", text_file, "--run-tokens", "40000"], "32767"),
        (m + ["--text", text_file, "--run-tokens", "0"], "at least 1"),
        (m + ["--text", text_file, "--max-tokens", "0"], "at least 1"),
        (m + ["--text", text_file, "--label", "../../etc"], "letters and digits"),
    ], full


def test_bad_input_one_line_exit_2_nothing_written(tmp_path, tiny_model_dir, text_file):
    cases, full = _bad_inputs(tmp_path, tiny_model_dir, text_file)
    for args, message in cases:
        out = tmp_path / "out"
        r = run("convert", out, *args, "-q")
        assert r.exit_code == 2, (args, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], (args, r.output)
        assert "Traceback" not in r.output
        assert not out.exists(), args
    r = run("convert", full, "--model", tiny_model_dir, "--text", text_file, "-q")
    assert r.exit_code == 2 and "not empty" in r.output
    assert [p.name for p in full.iterdir()] == ["x.txt"]


def test_existing_runs_need_resume_or_overwrite(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "ds"
    args = ["convert", out, "--model", tiny_model_dir, "--text", text_file, "-q"]
    assert run(*args).exit_code == 0
    r = run(*args)
    assert r.exit_code == 2 and "--resume" in r.output
    assert run(*args, "--resume").exit_code == 0
    assert run(*args, "--overwrite").exit_code == 0
    r = run(*args, "--resume", "--overwrite")
    assert r.exit_code == 2 and "exclude each other" in r.output


def _cli(*args):
    return [sys.executable, "-c", "from llm2nifti.cli.main import main; main()", *map(str, args)]


def test_killed_convert_resumes_to_identical_files(tmp_path, tiny_model_dir):
    text = tmp_path / "long.txt"
    text.write_text(TEXT * 12)
    common = ["--model", tiny_model_dir, "--text", text, "--run-tokens", 16, "--threads", 1, "-q"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ref = tmp_path / "ref"
    subprocess.run(_cli("convert", ref, *common), check=True, env=env, capture_output=True)
    n_runs = len(list(ref.rglob("*_bold.nii")))
    assert n_runs > 150

    out = tmp_path / "cut"
    proc = subprocess.Popen(_cli("convert", out, *common), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    scans = out / "sub-tinyllama" / "sub-tinyllama_scans.tsv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if scans.is_file() and len(scans.read_text().splitlines()) > 5:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "convert finished before it could be killed"
    done = len(list(out.rglob("*_bold.nii")))
    assert 0 < done < n_runs

    r = subprocess.run(_cli("convert", out, *common, "--resume"), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "kept" in r.stdout
    for p in ref.rglob("*"):
        if p.is_file():
            q = out / p.relative_to(ref)
            assert q.is_file() and q.read_bytes() == p.read_bytes(), p
    assert not list(out.rglob(".tmp-*"))


def test_ctrl_c_says_how_to_resume(tmp_path, tiny_model_dir):
    text = tmp_path / "long.txt"
    text.write_text(TEXT * 12)
    out = tmp_path / "ds"
    proc = subprocess.Popen(
        _cli("convert", out, "--model", tiny_model_dir, "--text", text, "--run-tokens", 16, "-q"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scans = out / "sub-tinyllama" / "sub-tinyllama_scans.tsv"
    deadline = time.time() + 120
    while time.time() < deadline and not scans.is_file() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err.strip().splitlines()[-1]
