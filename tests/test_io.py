"""Atomic, hashed writing of runs: the bytes nibabel writes, the checksum of those bytes."""

from __future__ import annotations

import hashlib
import sys

import nibabel as nib
import numpy as np
import pytest

from bids_llm.dataset import DatasetWriter, _read_tsv
from bids_llm.io import (CHECKSUMS, _HashingFile, _plain_nifti, checksum_file, new_hash,
                         save_img_checksum)
from llm2nifti.layout import NeuronLayout
from llm2nifti.sites import Site


def _layout(width=12, n_layers=3):
    site = Site(kind="mlp", architecture="llama", module_template="model.layers.{layer}.mlp.down_proj",
                hook="pre", width=width, n_layers=n_layers)
    return NeuronLayout(site)


def _run_img(layout, n_tokens=7, seed=0):
    buf = layout.empty_buffer(n_tokens)
    buf[:, :, :layout.width] = np.random.default_rng(seed).standard_normal(
        (n_tokens, len(layout.layers), layout.width), dtype=np.float32)
    return layout.buffer_to_img(buf, tr=1.0)


def test_hashing_file_is_a_file_object_to_nibabel_on_this_python(tmp_path):
    # Python >= 3.12 checks runtime Protocols on the type: read and write must be methods there.
    from nibabel.openers import Fileish, Opener

    with open(tmp_path / "f", "wb") as f:
        out = _HashingFile(f)
        assert isinstance(out, Fileish), sys.version
        opener = Opener(out)
        assert opener.fobj is out and not opener.me_opened


@pytest.mark.parametrize("algorithm", CHECKSUMS)
def test_a_run_is_written_as_nibabel_writes_it_and_hashed_as_its_bytes(tmp_path, algorithm):
    layout = _layout(width=10)  # 10 -> a padded grid: padding voxels are written too
    img = _run_img(layout)
    assert _plain_nifti(img) is not None  # the contiguous path is the one taken
    digest = save_img_checksum(img, tmp_path / "run.nii", algorithm)
    nib.save(img, tmp_path / "ref.nii")
    ours, ref = (tmp_path / "run.nii").read_bytes(), (tmp_path / "ref.nii").read_bytes()
    assert ours == ref
    h = new_hash(algorithm)
    h.update(ref)
    assert digest == h.hexdigest() == checksum_file(tmp_path / "ref.nii", algorithm)
    back = nib.load(tmp_path / "run.nii")
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(img.dataobj))
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("case", ["c-order", "int16-scaled", "float64-to-float32", "proxy", "gz"])
def test_other_images_go_through_nibabel_and_still_hash_their_bytes(tmp_path, case):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((4, 3, 2, 5)).astype(np.float32)
    name = "img.nii"
    if case == "c-order":
        img = nib.Nifti1Image(np.ascontiguousarray(data), np.eye(4))
    elif case == "int16-scaled":
        img = nib.Nifti1Image(data, np.eye(4))
        img.set_data_dtype(np.int16)
    elif case == "float64-to-float32":
        img = nib.Nifti1Image(data.astype(np.float64), np.eye(4))
        img.set_data_dtype(np.float32)
    elif case == "proxy":
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "src.nii")
        img = nib.load(tmp_path / "src.nii")
    else:
        img, name = nib.Nifti1Image(data, np.eye(4)), "img.nii.gz"
    if case in ("c-order", "int16-scaled", "float64-to-float32", "proxy"):
        assert _plain_nifti(img) is None
    digest = save_img_checksum(img, tmp_path / name)
    nib.save(img, tmp_path / f"ref-{name}")
    if case != "gz":  # gzip stamps the time: compare the decoded data instead
        assert (tmp_path / name).read_bytes() == (tmp_path / f"ref-{name}").read_bytes()
    assert digest == checksum_file(tmp_path / name)
    np.testing.assert_array_equal(nib.load(tmp_path / name).get_fdata(),
                                  nib.load(tmp_path / f"ref-{name}").get_fdata())


def test_unknown_checksum_is_refused():
    with pytest.raises(ValueError, match="unknown checksum"):
        new_hash("md5")


def _writer(root):
    layout = _layout()
    w = DatasetWriter(root, "m", "t", layout)
    w.init_dataset()
    w.add_participant({"model": "m"})
    return w, layout


def _write(w, layout, r):
    return w.write_run(r, _run_img(layout, seed=r), {"TaskName": "t", "RepetitionTime": 1.0},
                       "onset\tduration\n0\t1\n", ".nii")


def test_runs_of_an_older_dataset_keep_and_verify_their_sha256(tmp_path):
    w, layout = _writer(tmp_path)
    old = _write(w, layout, 1)
    # Make run 1 what an older version recorded: a sha256 column, no xxh3_128.
    rows = w.finished()
    (row,) = rows.values()
    del row[CHECKSUMS[0]]
    row["sha256"] = hashlib.sha256(old.read_bytes()).hexdigest()
    w._write_scans(rows.values())
    assert w.run_done(1)
    _write(w, layout, 2)  # a new run beside it: both columns, each row with its own checksum
    table = {r["filename"]: r for r in _read_tsv(w.scans_path)}
    assert list(next(iter(table.values()))) == ["filename", "xxh3_128", "sha256", "n_volumes"]
    assert table[f"func/{old.name}"]["xxh3_128"] == "n/a"
    assert w.run_done(1) and w.run_done(2)
    data = bytearray(old.read_bytes())
    data[-1] ^= 1
    old.write_bytes(bytes(data))
    assert not w.run_done(1) and w.run_done(2)


def test_a_row_without_any_checksum_is_not_done(tmp_path):
    w, layout = _writer(tmp_path)
    _write(w, layout, 1)
    rows = w.finished()
    for row in rows.values():
        row[CHECKSUMS[0]] = "n/a"
    w._write_scans(rows.values())
    assert not w.run_done(1)
