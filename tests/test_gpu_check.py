"""benchmarks/gpu_check.py at its tiny size, on the CPU: every check runs and its table prints."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_on_cpu_at_tiny_size(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
