"""The neuron layout: the one mapping between neurons and voxels.

Every layer becomes one z slice; the neurons of a layer are folded into a
near-square ``nx * ny`` grid (padded with voxels outside the mask when the
width has no near-square factorisation). Neuron ``n`` of the layer at slice
``k`` sits at voxel ``(i, j, k)`` with ``i = n % nx`` and ``j = n // nx``.

Writing volumes (:meth:`NeuronLayout.fold`, :meth:`NeuronLayout.to_img`),
reading images back (:meth:`NeuronLayout.unfold`, :meth:`NeuronLayout.from_masked`)
and naming neurons for hooks (:meth:`NeuronLayout.neurons`) all go through this
object; no other code computes voxel or neuron indices.

Neurons are numbered *layer-major* ("global index" ``g = k * width + n``);
nilearn's maskers order columns differently (C order over ``(x, y, z)``, the
layer varying fastest), which :meth:`NeuronLayout.mask_order` makes explicit.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np

from .errors import UsageError
from .sites import Site

__all__ = ["NeuronLayout", "fold_shape"]


def fold_shape(width):
    """Near-square ``(nx, ny)`` grid for ``width`` neurons.

    An exact factorisation with aspect ratio at most 2 is used when one exists
    (1536 -> 48 x 32, 3072 -> 64 x 48, 11008 -> 128 x 86); otherwise a square
    grid padded with voxels outside the mask.
    """
    width = int(width)
    if width < 1:
        raise ValueError("width must be positive")
    best = None
    for b in range(int(math.isqrt(width)), 0, -1):
        if width % b == 0:
            a = width // b
            best = (a, b)
            break
    if best is not None and best[0] <= 2 * best[1]:
        return best
    nx = math.isqrt(width - 1) + 1 if width > 1 else 1
    ny = -(-width // nx)
    return nx, ny


class NeuronLayout:
    """Mapping between ``(site, layer, neuron)`` and voxel ``(i, j, k)``.

    Parameters
    ----------
    site : Site
        The neurons laid out: its ``layers`` become z slices in order.

    Attributes
    ----------
    shape : tuple of int
        Spatial grid ``(nx, ny, nz)``.
    affine : ndarray of shape (4, 4)
        Identity (1 mm voxels): the same for every image of a dataset.
    """

    def __init__(self, site):
        self.site = site
        self.nx, self.ny = fold_shape(site.width)
        self.shape = (self.nx, self.ny, len(site.layers))
        self.affine = np.eye(4)
        self.widths = np.asarray(site.widths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.widths)]).astype(np.int64)

    # ------------------------------------------------------------------ sizes
    @property
    def width(self):
        """Units of the widest layer (every layer's, when they agree)."""
        return self.site.width

    @property
    def uniform(self):
        """True when every layer has :attr:`width` units."""
        return bool(np.all(self.widths == self.width))

    @property
    def layers(self):
        return self.site.layers

    @property
    def n_neurons(self):
        return self.site.n_neurons

    def __repr__(self):
        width = self.width if self.uniform else f"{int(self.widths.min())}-{self.width}"
        return (f"NeuronLayout(site={self.site.kind!r}, arch={self.site.architecture!r}, "
                f"layers={len(self.layers)}, width={width}, grid={self.shape})")

    def __eq__(self, other):
        return isinstance(other, NeuronLayout) and self.site == other.site

    def __hash__(self):
        return hash(self.site)

    # --------------------------------------------------------- index mapping
    def _slice_of(self, layer):
        try:
            return self.layers.index(int(layer))
        except ValueError:
            raise UsageError(
                f"layer {layer} is not in this layout (layers {self.layers[0]}-{self.layers[-1]})"
            ) from None

    def _slices(self, layer):
        return np.vectorize(self._slice_of)(layer) if np.ndim(layer) else self._slice_of(layer)

    def width_of(self, layer):
        """Units of ``layer`` (arrays broadcast)."""
        return self.widths[self._slices(layer)]

    def neuron_to_voxel(self, layer, neuron):
        """Voxel ``(i, j, k)`` of ``neuron`` in ``layer`` (arrays broadcast)."""
        neuron = np.asarray(neuron)
        k = self._slices(layer)
        if np.any((neuron < 0) | (neuron >= self.widths[k])):
            raise UsageError(f"neuron index out of range 0-{self.width - 1}" if self.uniform else
                             "neuron index out of range of its layer's width")
        return neuron % self.nx, neuron // self.nx, k

    def voxel_to_neuron(self, i, j, k):
        """``(layer, neuron)`` at voxel ``(i, j, k)``; raises for padding voxels."""
        i, j, k = np.asarray(i), np.asarray(j), np.asarray(k)
        neuron = j * self.nx + i
        if np.any((k < 0) | (k >= len(self.layers))) or np.any(neuron >= self.widths[k]):
            raise UsageError("voxel outside the neuron mask")
        return np.asarray(self.layers)[k], neuron

    def global_index(self, layer, neuron):
        """Layer-major index of ``(layer, neuron)``: the units of the layers before it, plus ``neuron``.

        With one width for every layer this is ``k * width + neuron``.
        """
        return self.offsets[self._slices(layer)] + np.asarray(neuron)

    def neurons(self, index=None):
        """``(layer, neuron)`` arrays for layer-major global indices (all by default)."""
        g = np.arange(self.n_neurons) if index is None else np.asarray(index)
        if self.uniform:
            return np.asarray(self.layers)[g // self.width], g % self.width
        k = np.searchsorted(self.offsets, g, side="right") - 1
        return np.asarray(self.layers)[k], g - self.offsets[k]

    def per_layer(self, values):
        """Split layer-major ``values`` (last axis) into ``{layer: values of the layer}``."""
        values = np.asarray(values)
        return {l: values[..., self.offsets[k]:self.offsets[k + 1]] for k, l in enumerate(self.layers)}

    def pad_layers(self, values, fill=np.nan):
        """Layer-major ``values`` as a ``(..., n_slices, width)`` array, ``fill`` past each layer's width."""
        values = np.asarray(values)
        if self.uniform:
            return values.reshape(values.shape[:-1] + (len(self.layers), self.width))
        out = np.full(values.shape[:-1] + (len(self.layers), self.width), fill,
                      dtype=np.result_type(values.dtype, np.asarray(fill).dtype))
        for k in range(len(self.layers)):
            out[..., k, :self.widths[k]] = values[..., self.offsets[k]:self.offsets[k + 1]]
        return out

    # ---------------------------------------------------------------- images
    def mask(self):
        """Boolean ``(nx, ny, nz)`` array: True at voxels that hold a neuron."""
        flat = np.arange(self.ny * self.nx)[None, :] < self.widths[:, None]
        return flat.reshape(len(self.layers), self.ny, self.nx).transpose(2, 1, 0)

    def labels(self):
        """int32 ``(nx, ny, nz)`` array: ``global index + 1`` at neurons, 0 elsewhere."""
        flat = np.zeros((len(self.layers), self.ny * self.nx), dtype=np.int32)
        for k, w in enumerate(self.widths):
            flat[k, :w] = np.arange(self.offsets[k] + 1, self.offsets[k + 1] + 1, dtype=np.int32)
        return flat.reshape(len(self.layers), self.ny, self.nx).transpose(2, 1, 0)

    def mask_img(self):
        """The mask as a NIfTI image (uint8) on the layout's affine."""
        return self._img(self.mask().astype(np.uint8))

    def label_img(self):
        """The neuron label image (int32; label = global index + 1)."""
        return self._img(self.labels())

    def mask_order(self):
        """Global index of each column of a nilearn-masked matrix.

        nilearn's ``masker.transform`` returns columns in C order over
        ``(x, y, z)`` of the mask's True voxels; column ``c`` holds neuron
        ``mask_order()[c]`` (layer-major global index).
        """
        labels = self.labels()
        return labels[labels > 0] - 1

    def from_masked(self, X):
        """Reorder columns of a nilearn-masked matrix to layer-major order."""
        X = np.asarray(X)
        out = np.empty_like(X)
        out[..., self.mask_order()] = X
        return out

    def to_masked(self, X):
        """Reorder layer-major columns to nilearn's masked column order."""
        return np.asarray(X)[..., self.mask_order()]

    def empty_buffer(self, n_volumes, dtype=np.float32):
        """Zeroed ``(T, nz, ny * nx)`` C-order buffer, the memory layout of a folded run.

        ``buffer[t, k, :width]`` holds the neurons of slice ``k`` at token ``t``;
        :meth:`buffer_to_data` views it as the ``(nx, ny, nz, T)`` array NIfTI
        stores, without a copy.
        """
        return np.zeros((int(n_volumes), len(self.layers), self.ny * self.nx), dtype=dtype)

    def buffer_to_data(self, buffer):
        """View a :meth:`empty_buffer` as an ``(nx, ny, nz, T)`` Fortran-order array."""
        t = buffer.shape[0]
        return buffer.reshape(t, len(self.layers), self.ny, self.nx).transpose(3, 2, 1, 0)

    def buffer_to_img(self, buffer, tr=1.0):
        """A 4D image over a filled :meth:`empty_buffer` (no copy)."""
        return self._img(self.buffer_to_data(buffer), tr=tr)

    def fold(self, X, dtype=np.float32):
        """Fold a ``(T, n_neurons)`` layer-major matrix into ``(nx, ny, nz, T)`` data."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_neurons:
            raise ValueError(f"expected (T, {self.n_neurons}) activations, got {X.shape}")
        buf = self.empty_buffer(X.shape[0], dtype=dtype)
        self.fill_buffer(buf, X)
        return self.buffer_to_data(buf)

    def fill_buffer(self, buf, X):
        """Write layer-major ``(T, n_neurons)`` values into a :meth:`empty_buffer`."""
        if self.uniform:
            buf[:, :, : self.width] = X.reshape(X.shape[0], len(self.layers), self.width)
            return buf
        for k, w in enumerate(self.widths):
            buf[:, k, :w] = X[:, self.offsets[k]:self.offsets[k + 1]]
        return buf

    def from_buffer(self, buf):
        """Layer-major ``(T, n_neurons)`` values of a filled :meth:`empty_buffer`."""
        if self.uniform:
            return buf[:, :, : self.width].reshape(buf.shape[0], self.n_neurons)
        return np.concatenate([buf[:, k, :w] for k, w in enumerate(self.widths)], axis=1)

    def unfold(self, data):
        """Unfold ``(nx, ny, nz[, T])`` data (or an image) into ``(T, n_neurons)``.

        A 3D input returns a 1D vector of ``n_neurons``.
        """
        if hasattr(data, "get_fdata") or hasattr(data, "dataobj"):
            self.check_img(data)
            data = np.asanyarray(data.dataobj)
        data = np.asarray(data)
        squeeze = data.ndim == 3
        if squeeze:
            data = data[..., None]
        if data.shape[:3] != self.shape:
            raise UsageError(f"image grid {data.shape[:3]} does not match the layout's {self.shape}")
        # (nx, ny, nz, T) -> (T, nz, ny, nx) -> (T, nz, ny*nx)
        flat = data.transpose(3, 2, 1, 0).reshape(data.shape[3], len(self.layers), -1)
        X = self.from_buffer(flat)
        return X[0] if squeeze else X

    def to_img(self, X, tr=1.0, dtype=np.float32):
        """A 4D image of ``(T, n_neurons)`` activations, TR in ``pixdim[4]``."""
        return self._img(self.fold(X, dtype=dtype), tr=tr)

    def _img(self, data, tr=None):
        img = nib.Nifti1Image(data, self.affine)
        img.header.set_xyzt_units("mm", "sec")
        if tr is not None and data.ndim == 4:
            zooms = img.header.get_zooms()
            img.header.set_zooms(zooms[:3] + (float(tr),))
        img.header.set_qform(self.affine, code=1)
        img.header.set_sform(self.affine, code=1)
        return img

    def check_img(self, img):
        """Raise :class:`UsageError` unless ``img`` is on this layout's grid and affine."""
        shape = tuple(img.shape[:3])
        if shape != self.shape:
            raise UsageError(
                f"image grid {shape} does not match the dataset's neuron layout {self.shape}: "
                "use an image made from this dataset's runs and mask"
            )
        if not np.allclose(img.affine, self.affine):
            raise UsageError(
                "image affine differs from the dataset's neuron layout (identity): nilearn would "
                "resample it and mix neurons; make it from this dataset's runs and mask"
            )

    # ---------------------------------------------------------- serialisation
    def to_dict(self):
        """JSON-serialisable description (stored in every bold sidecar)."""
        return {"site": self.site.to_dict(), "grid": list(self.shape),
                "fold": "i = neuron % nx, j = neuron // nx, k = position of layer in Layers",
                "affine": self.affine.tolist()}

    @classmethod
    def from_dict(cls, d):
        layout = cls(Site.from_dict(d["site"]))
        if list(layout.shape) != list(d["grid"]):
            raise UsageError(f"stored layout grid {d['grid']} disagrees with its site")
        return layout
