import nibabel as nib
import numpy as np
import pytest
from nilearn.maskers import NiftiMasker

from llm2nifti.errors import UsageError
from llm2nifti.layout import NeuronLayout, fold_shape
from llm2nifti.sites import Site


def make_layout(width=10, layers=(0, 2, 3), n_layers=4):
    return NeuronLayout(Site("mlp", "llama", "model.layers.{layer}.mlp.down_proj", "pre",
                             width, n_layers, tuple(layers)))


@pytest.mark.parametrize("width, shape", [(1536, (48, 32)), (3072, (64, 48)),
                                          (11008, (128, 86)), (128, (16, 8)), (64, (8, 8))])
def test_fold_shape_near_square_exact(width, shape):
    assert fold_shape(width) == shape


@pytest.mark.parametrize("width", [1, 2, 7, 127, 1009])
def test_fold_shape_pads_awkward_widths(width):
    nx, ny = fold_shape(width)
    assert nx * ny >= width
    assert nx * ny - width < nx  # at most one partial row of padding
    assert max(nx, ny) <= 2 * min(nx, ny) + 1


def test_every_neuron_has_one_voxel_and_back():
    lay = make_layout(width=10)  # 10 = 5 x 2
    layer, neuron = lay.neurons()
    i, j, k = lay.neuron_to_voxel(layer, neuron)
    vox = set(zip(i.tolist(), j.tolist(), np.asarray(k).tolist()))
    assert len(vox) == lay.n_neurons
    l2, n2 = lay.voxel_to_neuron(i, j, k)
    np.testing.assert_array_equal(l2, layer)
    np.testing.assert_array_equal(n2, neuron)
    assert set(np.unique(layer)) == {0, 2, 3}
    mask = lay.mask()
    assert mask.sum() == lay.n_neurons
    assert all(mask[a, b, c] for a, b, c in vox)


def test_padding_voxels_are_outside_mask_and_refused():
    lay = make_layout(width=7)
    assert lay.mask().sum() == 7 * 3
    assert lay.mask().size > 7 * 3
    with pytest.raises(UsageError):
        lay.voxel_to_neuron(lay.nx - 1, lay.ny - 1, 0)
    with pytest.raises(UsageError):
        lay.neuron_to_voxel(1, 0)  # layer 1 is not in the layout


def test_fold_unfold_roundtrip_exact():
    lay = make_layout(width=7)
    X = np.random.default_rng(0).standard_normal((5, lay.n_neurons)).astype(np.float32)
    data = lay.fold(X)
    assert data.shape == lay.shape + (5,)
    np.testing.assert_array_equal(lay.unfold(data), X)
    np.testing.assert_array_equal(data[~lay.mask()], 0)
    # voxel value is exactly the neuron's
    # slice 1 holds layer 2: neuron 4 there has global index width * 1 + 4
    g = lay.width * 1 + 4
    i, j, k = lay.neuron_to_voxel(2, 4)
    np.testing.assert_array_equal(data[i, j, k], X[:, g])


def test_label_image_and_nilearn_column_order():
    lay = make_layout(width=10)
    X = np.random.default_rng(1).standard_normal((6, lay.n_neurons)).astype(np.float32)
    img = lay.to_img(X)
    assert img.header.get_zooms()[3] == 1.0
    masked = NiftiMasker(mask_img=lay.mask_img(), standardize=None).fit_transform(img)
    assert not np.array_equal(masked, X)  # nilearn's order is not layer-major...
    np.testing.assert_array_equal(lay.from_masked(masked), X)  # ...and the layout undoes it
    np.testing.assert_array_equal(lay.to_masked(X), masked)
    labels = lay.labels()
    assert sorted(labels[labels > 0]) == list(range(1, lay.n_neurons + 1))


def test_serialisation_roundtrip_and_image_checks():
    lay = make_layout()
    assert NeuronLayout.from_dict(lay.to_dict()) == lay
    good = nib.Nifti1Image(np.zeros(lay.shape + (2,), np.float32), lay.affine)
    lay.check_img(good)
    with pytest.raises(UsageError, match="affine"):
        lay.check_img(nib.Nifti1Image(np.zeros(lay.shape, np.float32), np.diag([2, 2, 2, 1])))
    with pytest.raises(UsageError, match="grid"):
        lay.check_img(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), lay.affine))
