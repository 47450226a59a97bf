"""Record neuron activations with forward hooks placed through a :class:`~llm2nifti.sites.Site`."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Recorder", "record", "hook_tensor", "pinned_buffer"]


def pinned_buffer(layout, n_volumes):
    """A zeroed run buffer (as :meth:`NeuronLayout.empty_buffer`) in page-locked memory.

    Copies from a GPU into page-locked memory can run asynchronously; the numpy array
    returned keeps its torch storage alive.
    """
    shape = layout.empty_buffer(0).shape[1:]
    return torch.zeros((int(n_volumes), *shape), dtype=torch.float32, pin_memory=True).numpy()


def hook_tensor(site, args, output):
    """The neuron tensor a hook sees at ``site`` (module input or output)."""
    if site.hook == "pre":
        return args[0]
    return output[0] if isinstance(output, (tuple, list)) else output


class Recorder:
    """Context manager that records the neurons of ``site`` during forward passes.

    Parameters
    ----------
    model : torch.nn.Module
    site : Site
    buffer : ndarray of shape (T, n_slices, >= width), optional
        Write a batch-of-one forward pass straight into this float32 buffer
        (a :meth:`NeuronLayout.empty_buffer`): ``buffer[t, k, :width]`` receives the
        neurons of the ``k``-th layer of the site. Without it, activations are
        kept as tensors in :attr:`activations_`. On a GPU, with a page-locked buffer
        (:func:`pinned_buffer`), each layer's activations are cast to float32 on the GPU
        and copied to the host on a copy stream of their own, without waiting, while
        the next layers compute; the buffer is complete when the context exits.

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
        target = None if self.buffer is None else torch.from_numpy(self.buffer)
        self._copy_stream = None
        if target is not None and torch.cuda.is_available() and target.is_pinned():
            device = next(self.model.parameters()).device
            if device.type == "cuda":
                self._copy_stream = torch.cuda.Stream(device)
        try:
            for k, (layer, module) in enumerate(self.site.modules(self.model)):
                self._handles.append(self._attach(module, layer, k, target))
        except BaseException:
            self._remove()
            raise
        return self

    def _attach(self, module, layer, k, target):
        site = self.site
        width = site.width

        def store(act):
            act = act.detach()
            if target is not None:
                if act.shape[0] != 1:
                    raise ValueError("recording into a buffer needs a batch of one")
                if self._copy_stream is not None and act.is_cuda:
                    self._copy_async(target[: act.shape[1], k, :width], act[0])
                else:
                    target[: act.shape[1], k, :width].copy_(act[0], non_blocking=False)
            else:
                self.activations_[layer].append(act.to("cpu", torch.float32))

        if site.hook == "pre":
            def pre_hook(mod, args):
                store(args[0])
            return module.register_forward_pre_hook(pre_hook)

        def post_hook(mod, args, output):
            store(hook_tensor(site, args, output))
        return module.register_forward_hook(post_hook)

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
        return False

    def matrix(self):
        """Recorded activations as a ``(tokens, n_neurons)`` float32 array, layer-major.

        Forward passes are concatenated along tokens; batch rows are flattened
        in order (padding positions included, if any).
        """
        per_layer = []
        for layer in self.site.layers:
            chunks = [t.reshape(-1, t.shape[-1]) for t in self.activations_[layer]]
            if not chunks:
                raise RuntimeError("nothing was recorded: run a forward pass inside the context")
            per_layer.append(torch.cat(chunks, 0))
        return torch.cat(per_layer, 1).numpy()


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
