"""Intervene on neurons: inhibit, amplify or retain them with forward hooks.

The hooks sit at exactly the modules a scan recorded (through
:class:`~llm2nifti.sites.Site`), so a neuron set read from ``networks.tsv``
addresses the same neurons the recorder saw. Each hook returns a modified
*copy* of the neuron tensor (no in-place edits), so it works with autograd,
batches, ``generate`` (with or without a key-value cache), on CPU and GPU.

Modes
-----
``inhibit``
    Set the selected neurons to ``value`` (default 0: zeroing).
``amplify``
    ``x * scale + value`` on the selected neurons: add a constant
    (``value``, the published variant) or multiply (``scale``), or both.
``retain``
    Keep the selected neurons and set every *other* neuron of the site's
    layers to ``value`` (default 0). Layers without a selected neuron are
    zeroed entirely; a layer whose neurons are all kept gets no hook.

Ablation kinds (inhibit and retain)
-----------------------------------
``zero``
    Affected units become 0 (or ``value``): zero-ablation, the paper's.
``mean``
    Affected units become their mean over the scan's tokens: mean-ablation,
    which interpretability work usually prefers (the layer's downstream input
    stays near its usual offset instead of jumping to zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import experts
from ..errors import UsageError
from ..neuronset import NeuronSet
from ..sites import SITE_KINDS, Site, _get, resolve_site

__all__ = ["Intervention", "intervene", "attach", "as_per_layer", "MODES", "ABLATIONS"]

def as_per_layer(neurons):
    """``{layer: sorted unique int64 indices}`` from any accepted neuron description.

    Parameters
    ----------
    neurons : NeuronSet, dict of int -> sequence of int, or array of shape (n, 2)
        A neuron set, a per-layer mapping, or ``(layer, neuron)`` pairs.
    """
    if isinstance(neurons, NeuronSet):
        return neurons.per_layer()
    if isinstance(neurons, dict):
        out = {}
        for layer, idx in neurons.items():
            idx = np.unique(np.asarray(idx, dtype=np.int64).ravel())
            if idx.size:
                out[int(layer)] = idx
        return out
    pairs = np.asarray(neurons, dtype=np.int64)
    if pairs.size == 0:
        return {}
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise UsageError("neurons must be a NeuronSet, {layer: indices} or (layer, neuron) pairs")
    return {int(l): np.unique(pairs[pairs[:, 0] == l, 1]) for l in np.unique(pairs[:, 0])}


def _replace_output(output, new):
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    if isinstance(output, list):
        return [new] + list(output[1:])
    return new


# ------------------------------------------------------------------ modes
# A mode says which neurons of a layer its hook changes and how. Adding a mode
# is one more entry in _MODES.
def _selected(selected, site):
    return dict(selected)


def _others(selected, site):
    return {l: np.setdiff1d(np.arange(site.width_of(l), dtype=np.int64), selected.get(l, ()),
                            assume_unique=True)
            for l in site.layers}


def _fill(x, idx, value, scale):
    if torch.is_tensor(value):  # one value per unit (mean-ablation)
        y = x.clone()
        y[..., idx] = value.to(device=x.device, dtype=x.dtype)
        return y
    return x.index_fill(-1, idx, value)


def _affine(x, idx, value, scale):
    y = x.clone()
    y[..., idx] = x.index_select(-1, idx) * scale + value
    return y


def _check_set(value, scale):
    if scale is not None:
        raise UsageError("scale only applies to mode='amplify'")


def _check_amplify(value, scale):
    if value is None and scale is None:
        raise UsageError("amplify needs value= (a constant added) or scale= (a factor)")


@dataclass(frozen=True)
class _Mode:
    targets: object    # (selected per layer, site) -> per-layer indices the hook changes
    transform: object  # (x, idx, value, scale) -> a new tensor
    check: object      # (value, scale) -> None, or raise UsageError


_MODES = {
    "inhibit": _Mode(_selected, _fill, _check_set),
    "amplify": _Mode(_selected, _affine, _check_amplify),
    "retain": _Mode(_others, _fill, _check_set),
}
MODES = tuple(_MODES)
ABLATIONS = ("zero", "mean")  # what inhibit and retain put in place of a unit


# ------------------------------------------------------------------ hook kinds
# How a transform reaches the module's tensor: its first input (pre) or output (post).
def _pre_hook(apply):
    def hook(mod, args, kwargs):
        if args:
            return (apply(args[0]),) + tuple(args[1:]), kwargs
        key = next(iter(kwargs))
        return args, dict(kwargs, **{key: apply(kwargs[key])})
    return hook


def _post_hook(apply):
    def hook(mod, args, output):
        first = output[0] if isinstance(output, (tuple, list)) else output
        return _replace_output(output, apply(first))
    return hook


def _routing_hook(part, apply):
    """Edit the routing weights of ``part.experts`` in an experts module's inputs."""
    def hook(mod, args, kwargs):
        _, index, weights = experts.routing_inputs(args, kwargs)
        edited = apply(experts.routing_matrix(index, weights, part.experts))
        new = weights.clone()
        for j, e in enumerate(part.experts):
            hit = index == e
            new = torch.where(hit, edited[:, j:j + 1].to(new.dtype), new)
        if len(args) >= 3:
            return (args[0], index, new) + tuple(args[3:]), kwargs
        key = list(kwargs)[2 - len(args)]  # the third routing input came as a keyword
        return args, dict(kwargs, **{key: new})
    return hook


def _experts_hook(part, apply):
    """Add to an experts module's output the change that edited hidden neurons make."""
    width = part.expert_width

    def routed(mod, args, kwargs, output):
        x, index, weights = experts.routing_inputs(args, kwargs)
        out = output.reshape(-1, output.shape[-1]).clone()  # rows, as the routing inputs
        for j, e in enumerate(part.experts):
            edit = apply.only(j * width, (j + 1) * width)
            rows = (index == e).any(-1).nonzero().squeeze(-1)
            if edit is None or not rows.numel():
                continue
            h = experts.expert_hidden(mod, e, x[rows])
            delta = experts.expert_output(mod, e, edit(h)) - experts.expert_output(mod, e, h)
            w = (weights[rows] * (index[rows] == e)).sum(-1, keepdim=True)
            out.index_add_(0, rows, (delta * w).to(out.dtype))
        return out.view(output.shape)

    def dense(mod, args, kwargs, output):
        x = args[0] if args else next(iter(kwargs.values()))
        h = experts.dense_hidden(mod, x)
        routed_rows = (x.view(h.shape[0], -1, x.shape[-1]) != 0).any(-1, keepdim=True)
        new = h.clone()
        for j, e in enumerate(part.experts):
            edit = apply.only(j * width, (j + 1) * width)
            if edit is not None:
                new[e] = torch.where(routed_rows[e], edit(h[e]), h[e])
        return output + experts.dense_output(mod, new - h).to(output.dtype)

    return dense if part.kernel == "dense" else routed


def _register(module, part, apply):
    if part.hook == "pre":
        return module.register_forward_pre_hook(_pre_hook(apply), with_kwargs=True)
    if part.hook == "post":
        return module.register_forward_hook(_post_hook(apply))
    if part.hook == "routing":
        return module.register_forward_pre_hook(_routing_hook(part, apply), with_kwargs=True)
    return module.register_forward_hook(_experts_hook(part, apply), with_kwargs=True)


class _PartEdit:
    """A layer's edit restricted to the units ``[lo, hi)`` of one part, renumbered from 0."""

    def __init__(self, idx, value, transform, scale):
        self.idx, self.value, self.transform, self.scale = idx, value, transform, scale
        self._cache = {}

    def only(self, lo, hi):
        keep = (self.idx >= lo) & (self.idx < hi)
        if not keep.any():
            return None
        idx = self.idx[keep] - lo
        value = self.value[keep] if torch.is_tensor(self.value) else self.value
        return _PartEdit(idx, value, self.transform, self.scale)

    def __call__(self, x):
        idx = self._cache.get(x.device)
        if idx is None:
            idx = self._cache[x.device] = self.idx.to(x.device)
        return self.transform(x, idx, self.value, self.scale)


def _resolve(model, site, neurons):
    """The :class:`Site` an intervention acts on."""
    if site is None or isinstance(site, str):
        kind = site or (neurons.site if isinstance(neurons, NeuronSet) else "mlp")
        return resolve_site(model, kind)
    if not isinstance(site, Site):
        raise UsageError(f"site must be a Site or one of {', '.join(SITE_KINDS)}")
    return site


def _check_neurons(selected, site):
    outside = sorted(set(selected) - set(site.layers))
    if outside:
        raise UsageError(f"neurons in layer(s) {outside}, which the site does not cover "
                         f"(layers {site.layers[0]}-{site.layers[-1]})")
    for layer, idx in selected.items():
        if idx.min() < 0 or idx.max() >= site.width_of(layer):
            raise UsageError(f"neuron index out of range in layer {layer}: "
                             f"this site has {site.width_of(layer)} neurons in that layer")


def _check_ablation(mode, ablation, value, means):
    if ablation not in ABLATIONS:
        raise UsageError(f"unknown ablation {ablation!r}: choose one of {', '.join(ABLATIONS)}")
    if ablation == "mean":
        if mode == "amplify":
            raise UsageError("amplify adds to or scales units; ablation='mean' applies to inhibit "
                             "and retain")
        if means is None:
            raise UsageError("ablation='mean' needs means= (each unit's mean over the scan: "
                             "llm2nifti.neuron_stats(dataset)['mean'])")
        if value is not None:
            raise UsageError("ablation='mean' sets units to their means: leave value= unset")


def _per_layer_means(means, site):
    """``{layer: (width,) array}`` from a dict, or from layer-major values of the site's layers."""
    if isinstance(means, dict):
        out = {int(l): np.asarray(v, dtype=np.float64).ravel() for l, v in means.items()}
    else:
        flat = np.asarray(means, dtype=np.float64).ravel()
        if flat.size != site.n_neurons:
            raise UsageError(f"means hold {flat.size} values; the site's {len(site.layers)} "
                             f"layers need {site.n_neurons}")
        offsets = np.concatenate([[0], np.cumsum(site.widths)])
        out = {l: flat[offsets[k]:offsets[k + 1]] for k, l in enumerate(site.layers)}
    bad = [l for l in site.layers if l not in out or out[l].size != site.width_of(l)]
    if bad:
        raise UsageError(f"means lack layer(s) {bad[:5]} or have the wrong width: pass the "
                         "neuron_stats of a scan of this site")
    return out


class Intervention:
    """Forward hooks that inhibit, amplify or retain neurons of a site.

    Use it as a context manager (hooks are removed on exit, also on error),
    or call :meth:`attach` and later :meth:`remove`.

    Parameters
    ----------
    model : torch.nn.Module
        The model whose neurons are changed.
    neurons : NeuronSet, dict of int -> indices, or array of (layer, neuron) pairs
        The selected neurons.
    mode : {"inhibit", "amplify", "retain"}
        See the module documentation.
    value : float, optional
        ``inhibit``/``retain``: the value the affected neurons are set to
        (default 0). ``amplify``: the constant added (default 0).
    scale : float, optional
        ``amplify`` only: the factor the selected neurons are multiplied by
        (default 1).
    site : Site or {"mlp", "mlp-out", "attn", "residual"}, optional
        Where the neurons live. Default: the model's site of the neuron set's
        kind (``"mlp"``), over all layers. For ``retain``, the layers of the
        site are the ones whose other neurons are zeroed.
    ablation : {"zero", "mean"}
        ``inhibit``/``retain``: what replaces an affected unit: 0 (or ``value``),
        or its mean over the scan's tokens (``means``).
    means : dict of int -> array, or array, optional
        Each unit's mean, for ``ablation="mean"``: per layer, or layer-major over
        the site's layers (the ``mean`` column of :func:`~llm2nifti.neuron_stats`).

    Attributes
    ----------
    site_ : Site
        The resolved site.
    targets_ : dict of int -> ndarray
        Per layer, the indices the hook changes (for ``retain``, the neurons
        *not* kept).
    n_selected_ : int
        Number of selected neurons.

    Examples
    --------
    >>> with intervene(model, {3: [7, 9]}, mode="inhibit"):  # doctest: +SKIP
    ...     out = model(input_ids)
    """

    def __init__(self, model, neurons, mode="inhibit", value=None, scale=None, site=None,
                 ablation="zero", means=None):
        if mode not in _MODES:
            raise UsageError(f"unknown intervention mode {mode!r}: choose one of {', '.join(MODES)}")
        _MODES[mode].check(value, scale)
        _check_ablation(mode, ablation, value, means)
        self.model = model
        self.neurons = neurons
        self.mode = mode
        self.value = value
        self.scale = scale
        self.site = site
        self.ablation = ablation
        self.means = means
        self._handles = []
        self._prepare()

    def _prepare(self):
        site = _resolve(self.model, self.site, self.neurons)
        selected = as_per_layer(self.neurons)
        _check_neurons(selected, site)
        targets = _MODES[self.mode].targets(selected, site)
        self.site_ = site
        self.targets_ = {l: t for l, t in targets.items() if t.size}
        self.n_selected_ = int(sum(len(v) for v in selected.values()))
        self.means_ = None if self.ablation == "zero" else _per_layer_means(self.means, site)

    def _transform(self, layer):
        """The edit a hook applies to ``layer``'s units (:class:`_PartEdit`, whole layer)."""
        idx = torch.as_tensor(self.targets_[layer], dtype=torch.long)
        value = 0.0 if self.value is None else float(self.value)
        scale = 1.0 if self.scale is None else float(self.scale)
        if self.means_ is not None:  # mean-ablation: each unit takes its mean over the scan
            value = torch.as_tensor(self.means_[layer][self.targets_[layer]], dtype=torch.float32)
        return _PartEdit(idx, value, _MODES[self.mode].transform, scale)

    def attach(self):
        """Register the hooks and return ``self``; call :meth:`remove` to undo."""
        if self._handles:
            raise RuntimeError("this intervention is already attached")
        try:
            for layer in self.site_.layers:
                if layer not in self.targets_:
                    continue
                edit, offset = self._transform(layer), 0
                for part in self.site_.parts(layer):
                    local = edit.only(offset, offset + part.width)
                    if local is not None:
                        module = _get(self.model, part.module)
                        self._handles.append(_register(module, part, local))
                    offset += part.width
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self):
        """Remove every hook this intervention placed (safe to call twice)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def attached(self):
        return bool(self._handles)

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.remove()
        return False

    def __repr__(self):
        extra = "" if self.ablation == "zero" else f", ablation={self.ablation!r}"
        extra += "" if self.value is None else f", value={self.value}"
        extra += "" if self.scale is None else f", scale={self.scale}"
        return (f"Intervention(mode={self.mode!r}, {self.n_selected_} neurons, "
                f"site={self.site_.kind!r}{extra}, attached={self.attached})")


def intervene(model, neurons, mode="inhibit", value=None, scale=None, site=None, ablation="zero",
              means=None):
    """Context manager that inhibits, amplifies or retains ``neurons`` of ``model``.

    Parameters are those of :class:`Intervention`.

    Returns
    -------
    Intervention
        Entering it places the hooks; leaving it removes them, also on error.

    Examples
    --------
    >>> from llm2nifti.neuronset import NeuronSet
    >>> key = NeuronSet.from_tsv("networks.tsv").union()  # doctest: +SKIP
    >>> with intervene(model, key, mode="inhibit"):  # doctest: +SKIP
    ...     loss = model(ids, labels=ids).loss
    """
    return Intervention(model, neurons, mode=mode, value=value, scale=scale, site=site,
                        ablation=ablation, means=means)


def attach(model, neurons, mode="inhibit", value=None, scale=None, site=None, ablation="zero",
           means=None):
    """Like :func:`intervene`, but the hooks stay attached until ``.remove()``.

    Returns
    -------
    Intervention
        Already attached.
    """
    return Intervention(model, neurons, mode=mode, value=value, scale=scale, site=site,
                        ablation=ablation, means=means).attach()
