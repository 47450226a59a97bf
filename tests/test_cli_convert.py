"""The command line as a user meets it: outputs, exit codes, one-line errors.

Interruption is tested in test_interrupts.py, with signals sent at chosen points."""

from click.testing import CliRunner

from bids_llm.dataset import Dataset
from llm2nifti.cli.main import main



def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_convert_local_folder_prints_where_and_how(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "ds"
    r = run("convert", out, "--model", tiny_model_dir, "--text", text_file, "--run-tokens", 64, "-q")
    assert r.exit_code == 0, r.output
    assert "Wrote 5 run(s)" in r.output and "plot_02_nilearn_decomposition.py" in r.output
    assert len(Dataset(out).runs(participant="tinyllama", task="stories")) == 5


def test_one_option_name_for_the_site_and_the_participant(tmp_path, tiny_model_dir, text_file):
    """convert and localize say --site and --participant like every other command; the names of
    earlier releases (--neurons, --label) still work but are not listed."""
    for command in ("convert", "localize", "decompose", "networks", "connectivity"):
        shown = run(command, "--help").output
        assert "--site" in shown and "--neurons" not in shown and "--label " not in shown, command
    out = tmp_path / "ds"
    r = run("convert", out, "--model", tiny_model_dir, "--text", text_file, "--run-tokens", 64,
            "--site", "mlp-out", "--participant", "a", "-q")
    assert r.exit_code == 0, r.output
    r = run("convert", out, "--model", tiny_model_dir, "--text", text_file, "--run-tokens", 64,
            "--neurons", "residual", "--label", "b", "-q")
    assert r.exit_code == 0, r.output
    ds = Dataset(out)
    assert {(x.participant, x.site_kind) for x in ds.runs()} == {("a", "mlp-out"), ("b", "residual")}


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
    from transformers import MambaConfig, MambaForCausalLM

    ssm = tmp_path / "mamba"
    MambaForCausalLM(MambaConfig(vocab_size=258, hidden_size=32, num_hidden_layers=1, state_size=4,
                                 expand=2, conv_kernel=2)).save_pretrained(ssm)
    from conftest import byte_tokenizer
    byte_tokenizer().save_pretrained(ssm)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    m = ["--model", model_dir]
    return [
        (["--model", tmp_path / "no-such-model"], "not found"),
        (["--model", no_weights], "has no config.json"),
        (["--model", ssm], "this mamba model has no mlp units: its sites are residual, mixer"),
        (m + ["--text", empty], "holds no text"),
        (m + ["--text", binary], "looks binary"),
        (m + ["--text", latin], "--encoding"),
        (m + ["--text", text_file, "--layers", "5"], "unknown layer"),
        (m + ["--text", text_file, "--run-tokens", "40000"], "32767"),
        (m + ["--text", text_file, "--run-tokens", "0"], "at least 1"),
        (m + ["--text", text_file, "--max-tokens", "0"], "at least 1"),
        (m + ["--text", text_file, "--participant", "../../etc"], "letters and digits"),
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
