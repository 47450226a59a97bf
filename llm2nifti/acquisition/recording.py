"""Record neuron activations with forward hooks placed through a :class:`~llm2nifti.sites.Site`."""

from __future__ import annotations

import numpy as np
import torch

from .. import experts
from ..errors import UsageError

__all__ = ["Recorder", "record", "pinned_buffer"]


def pinned_buffer(layout, n_volumes):
    """A zeroed run buffer (as :meth:`NeuronLayout.empty_buffer`) in page-locked memory.

    Copies from a GPU into page-locked memory can run asynchronously; the numpy array
    returned keeps its torch storage alive.
    """
    shape = layout.empty_buffer(0).shape[1:]
    return torch.zeros((int(n_volumes), *shape), dtype=torch.float32, pin_memory=True).numpy()


class Recorder:
    """Context manager that records the units of ``site`` during forward passes.

    Parameters
    ----------
    model : torch.nn.Module
    site : Site
    buffer : ndarray of shape (T, n_slices, >= width), optional
        Write a batch-of-one forward pass straight into this float32 buffer
        (a :meth:`NeuronLayout.empty_buffer`): ``buffer[t, k, :width_k]`` receives the
        units of the ``k``-th layer of the site. Without it, activations are
        kept as tensors in ``activations_``. On a GPU, with a page-locked buffer
        (:func:`pinned_buffer`), each layer's activations are cast to float32 on the GPU
        and copied to the host on a copy stream of their own, without waiting, while
        the next layers compute; the buffer is complete when the context exits.

    Notes
    -----
    Hooks only read: the model computes exactly what it computes without them. Units of
    fused experts (``experts`` and ``routing`` parts of the site) are computed again from
    the experts module's inputs and weights (:mod:`llm2nifti.experts`); an expert's units
    are 0 on the tokens not routed to it.

    Attributes
    ----------
    activations_ : dict of int -> list of torch.Tensor
        Per layer, one float32 CPU tensor ``(batch, T, width)`` per forward pass
        (only when no buffer is given).

    Examples
    --------
    >>> with Recorder(model, site) as rec:  # doctest: +SKIP
    ...     model(input_ids)
    >>> X = rec.matrix()  # (T, n_neurons), layer-major
    """

    def __init__(self, model, site, buffer=None):
        self.model = model
        self.site = site
        self.buffer = buffer
        self._handles = []

    def __enter__(self):
        self.activations_ = {layer: [] for layer in self.site.layers}
        self._pieces = {}
        self._calls = {}
        self._finite = None
        target = None if self.buffer is None else torch.from_numpy(self.buffer)
        self._copy_stream = None
        if target is not None and torch.cuda.is_available() and target.is_pinned():
            device = next(self.model.parameters()).device
            if device.type == "cuda":
                self._copy_stream = torch.cuda.Stream(device)
        try:
            for k, layer in enumerate(self.site.layers):
                offset = 0
                parts = self.site.parts(layer)
                for p, part in enumerate(parts):
                    module = _get(self.model, part.module)
                    store = self._store(layer, k, p, len(parts), offset, part.width, target)
                    self._handles.append(_attach(module, part, store))
                    offset += part.width
        except BaseException:
            self._remove()
            raise
        return self

    def _store(self, layer, k, p, n_parts, offset, width, target):
        """The function a part's hook calls with its ``(batch, T, width)`` units."""
        def store(act):
            self._calls[(layer, p)] = self._calls.get((layer, p), 0) + 1
            if target is not None and self._calls[(layer, p)] > 1:
                raise UsageError(f"{self.site.parts(layer)[p].module} runs more than once in one "
                                 "forward pass (a model that loops over its layers): llm2nifti "
                                 "records modules that run once per token")
            act = act.detach()
            ok = torch.isfinite(act).all()  # on act's device: no synchronisation here
            self._finite = ok if self._finite is None else self._finite & ok
            if act.ndim == 2:  # experts see flattened (tokens, .) rows of a batch of one
                act = act.unsqueeze(0)
            if act.ndim != 3 or act.shape[-1] != width:
                raise UsageError(f"the {self.site.kind} units of layer {layer} come as "
                                 f"{tuple(act.shape)}, not (batch, tokens, {width}): this model "
                                 "computes that site another way; choose another --site")
            if target is not None:
                if act.shape[0] != 1:
                    raise ValueError("recording into a buffer needs a batch of one")
                dst = target[: act.shape[1], k, offset:offset + width]
                if self._copy_stream is not None and act.is_cuda:
                    self._copy_async(dst, act[0])
                else:
                    dst.copy_(act[0], non_blocking=False)
            elif n_parts == 1:
                self.activations_[layer].append(act.to("cpu", torch.float32))
            else:  # the layer's parts are joined once the last one has run
                pieces = self._pieces.setdefault(layer, [None] * n_parts)
                pieces[p] = act.to("cpu", torch.float32)
                if all(x is not None for x in pieces):
                    self.activations_[layer].append(torch.cat(pieces, -1))
                    self._pieces[layer] = [None] * n_parts
        return store

    def _copy_async(self, dst, act):
        """GPU -> page-locked host copy on the copy stream, after the kernels that made ``act``."""
        src = act.to(torch.float32)  # on the compute stream, on the GPU
        self._copy_stream.wait_stream(torch.cuda.current_stream(act.device))
        with torch.cuda.stream(self._copy_stream):
            dst.copy_(src, non_blocking=True)
        src.record_stream(self._copy_stream)  # not freed before the copy has read it

    def _remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def __exit__(self, *exc):
        self._remove()
        if self._copy_stream is not None:
            self._copy_stream.synchronize()  # every copy has landed in the buffer
        if exc[0] is None and self.buffer is not None:
            idle = sorted({l for l in self.site.layers for p in range(len(self.site.parts(l)))
                           if (l, p) not in self._calls})
            if idle:
                raise UsageError(f"the {self.site.kind} modules of layer(s) {idle[:8]} did not run "
                                 "while the model read the text (layers that need another input, "
                                 "such as images): choose --layers without them")
        return False

    def all_finite(self):
        """Whether every unit recorded so far was finite (no inf or NaN: no overflow)."""
        return self._finite is None or bool(self._finite)

    def matrix(self):
        """Recorded activations as a ``(tokens, n_neurons)`` float32 array, layer-major.

        Forward passes are concatenated along tokens; batch rows are flattened
        in order (padding positions included, if any).
        """
        per_layer = []
        for layer in self.site.layers:
            chunks = [t.reshape(-1, t.shape[-1]) for t in self.activations_[layer]]
            if not chunks:
                raise RuntimeError(f"nothing was recorded at layer {layer}: run a forward pass "
                                   "inside the context (a layer that needs another input, such as "
                                   "images, does not run on text alone)")
            per_layer.append(torch.cat(chunks, 0))
        return torch.cat(per_layer, 1).numpy()


def _get(model, dotted):
    for part in dotted.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def _attach(module, part, store):
    """Register the hook that reads ``part`` of ``module`` and hands its units to ``store``."""
    if part.hook == "pre":
        def pre_hook(mod, args, kwargs):
            store(args[0] if args else next(iter(kwargs.values())))
        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    if part.hook == "post":
        def post_hook(mod, args, output):
            store(output[0] if isinstance(output, (tuple, list)) else output)
        return module.register_forward_hook(post_hook)
    if part.hook == "routing":
        def routing_hook(mod, args, kwargs):
            _, index, weights = experts.routing_inputs(args, kwargs)
            store(experts.routing_matrix(index, weights, part.experts))
        return module.register_forward_pre_hook(routing_hook, with_kwargs=True)
    if part.hook == "experts":
        read = _read_dense if part.kernel == "dense" else _read_routed

        def experts_hook(mod, args, kwargs, output):
            store(read(mod, part, args, kwargs))
        return module.register_forward_hook(experts_hook, with_kwargs=True)
    raise ValueError(f"unknown hook kind {part.hook!r}")


def _read_routed(mod, part, args, kwargs):
    """``(tokens, width)`` hidden neurons of the routed experts of ``part``."""
    x, index, _ = experts.routing_inputs(args, kwargs)
    width = part.expert_width
    out = x.new_zeros((x.shape[0], len(part.experts) * width))
    for j, e in enumerate(part.experts):
        rows = (index == e).any(-1).nonzero().squeeze(-1)
        if rows.numel():
            out[rows, j * width:(j + 1) * width] = experts.expert_hidden(mod, e, x[rows]).to(out.dtype)
    return out


def _read_dense(mod, part, args, kwargs):
    """``(tokens, width)`` hidden neurons of experts that run on every (router-scaled) token."""
    x = args[0] if args else next(iter(kwargs.values()))
    h = experts.dense_hidden(mod, x)  # (experts, tokens, width)
    return torch.cat([h[e] for e in part.experts], dim=-1)


@torch.inference_mode()
def record(model, site, input_ids):
    """Activations of ``site`` for one sequence.

    Parameters
    ----------
    model : torch.nn.Module
    site : Site
    input_ids : sequence of int or 1D tensor

    Returns
    -------
    X : ndarray of shape (len(input_ids), site.n_neurons)
        float32, layer-major columns.
    """
    ids = torch.tensor(np.asarray(input_ids, dtype=np.int64)).reshape(1, -1)
    device = next(model.parameters()).device
    with Recorder(model, site) as rec:
        model(input_ids=ids.to(device), use_cache=False)
    return rec.matrix()
