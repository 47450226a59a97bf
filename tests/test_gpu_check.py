"""benchmarks/gpu_check.py at its tiny size, on the CPU: every check runs and its table prints."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_runs_on_cpu_at_tiny_size(tmp_path, capsys):
    module = _module()
    figures = tmp_path / "figures.json"
    assert module.main([str(tmp_path / "out"), "--tiny", "--device", "cpu",
                        "--json", str(figures)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("check"))
    rows = lines[head + 1:head + 4]
    assert [r.split()[0] for r in rows] == ["convert", "fast", f"{module.TINY['scale_tokens']:,}-token"]
    got = json.loads(figures.read_text())
    c = got["convert"]
    assert c["ratio"] > 0 and c["bound"] in ("forward", "disk")
    assert c["neurons"] == module.TINY["layers"] * module.TINY["inter"]
    assert abs(c["ratio"] - c["convert_s"] / max(c["forward_s"], c["disk_s"])) < 1e-9
    f = got["fast"]
    assert f["matched_r_mean"] > 0.999  # the same device twice: the same maps
    s = got["scale"]
    assert s["exact"] == s["planted"] == module.TINY["scale_networks"]
    assert not any(Path(tmp_path / "out").iterdir())  # scratch removed


def test_a_failing_check_is_its_row_and_the_others_still_run(tmp_path, capsys, monkeypatch):
    module = _module()
    seen = []

    def broken(out, size, device):
        # what the first H200 run met inside the fast backend
        raise RuntimeError("linalg.eigh: (Batch element 4): The algorithm failed to converge\nmore")

    def scale(out, size, device):  # the JSON already holds the failed check when the next runs
        seen.append(json.loads(figures.read_text())["fast"])
        return real_scale(out, size, device)

    real_scale = module.check_scale
    monkeypatch.setattr(module, "check_fast_backend", broken)
    monkeypatch.setattr(module, "check_scale", scale)
    figures = tmp_path / "figures.json"
    assert module.main([str(tmp_path / "out"), "--tiny", "--device", "cpu",
                        "--json", str(figures)]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fast"))
    assert "failed" in row and "RuntimeError: linalg.eigh: (Batch element 4)" in row
    assert "more" not in row  # the first line of the error only
    got = json.loads(figures.read_text())
    assert got["fast"]["error"].startswith("error: RuntimeError") and seen == [got["fast"]]
    assert got["scale"]["exact"] == got["scale"]["planted"] and "ratio" in got["convert"]
