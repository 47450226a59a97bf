"""The scale benchmark at a CI-friendly size: its synthetic scan decomposes back to the planted networks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_planted_networks_come_back_exactly(tmp_path, capsys, scheduler):
    bench = _bench()
    code = bench.main([str(tmp_path / "scan"), "--layers", "4", "--width", "384", "--tokens", "3072",
                       "--networks", "6", "--size", "30", "-k", "8", "--n-init", "3",
                       "--threads", "1", "--scheduler", scheduler])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "planted networks recovered neuron-exactly: 6 of 6 (all)" in out
    assert "peak RSS" in out and "read" in out
