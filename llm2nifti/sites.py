"""Where neurons live in a model: the one place that knows architecture names.

A :class:`Site` says which module of each layer carries the neurons, whether
they are read from a forward *pre*-hook (the module's input) or a forward hook
(its output), and how many neurons each layer has. Recording and
intervention both place their hooks through :meth:`Site.modules`, so that a
neuron found in a scan is exactly the neuron an intervention touches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UsageError

__all__ = ["Site", "SITE_KINDS", "SUPPORTED_ARCHITECTURES", "resolve_site", "parse_layers",
           "mlp_projections"]

SITE_KINDS = ("mlp", "mlp-out", "attn", "residual")

# Per architecture: the layer list, and per site kind (module under the layer, hook kind,
# width). "pre": the units are the module's *input* (forward pre-hook); "post": its *output*.
# Width: a config attribute, "hidden" (the hidden size) or "heads" (heads x head dim).
#   mlp      the MLP's hidden neurons (input of down_proj; output of the activation in GPT-2)
#   mlp-out  the MLP's output (output of down_proj / c_proj / dense_4h_to_h): hidden-size units
#   attn     the attention heads' concatenated outputs (input of the output projection)
#   residual each block's output
_GATED = {"layers": "model.layers",
          "mlp": ("mlp.down_proj", "pre", "intermediate_size"),
          "mlp-out": ("mlp.down_proj", "post", "hidden"),
          "attn": ("self_attn.o_proj", "pre", "heads")}
_ARCHITECTURES = {
    "gpt2": {"layers": "transformer.h", "mlp": ("mlp.act", "post", "n_inner"),
             "mlp-out": ("mlp.c_proj", "post", "hidden"), "attn": ("attn.c_proj", "pre", "heads")},
    "gpt_neox": {"layers": "gpt_neox.layers", "mlp": ("mlp.act", "post", "intermediate_size"),
                 "mlp-out": ("mlp.dense_4h_to_h", "post", "hidden"),
                 "attn": ("attention.dense", "pre", "heads")},
    **{arch: _GATED for arch in ("llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma",
                                 "gemma2", "gemma3_text")},
}
SUPPORTED_ARCHITECTURES = tuple(sorted(_ARCHITECTURES))

# model_type -> (modules whose outputs are the MLP neurons, modules that read them), under a layer
_GATED_PROJ = (("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))
_PROJECTIONS = {
    "gpt2": (("mlp.c_fc",), ("mlp.c_proj",)),
    "gpt_neox": (("mlp.dense_h_to_4h",), ("mlp.dense_4h_to_h",)),
    **{arch: _GATED_PROJ for arch, spec in _ARCHITECTURES.items() if spec is _GATED},
}


def _get(obj, dotted):
    for part in dotted.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def parse_layers(spec, n_layers):
    """Parse a layer selection such as ``"0-11"``, ``"5,7"`` or ``"0-3,10"``.

    Parameters
    ----------
    spec : str, sequence of int or None
        The selection; None means every layer.
    n_layers : int
        Number of layers in the model.

    Returns
    -------
    layers : tuple of int
        Sorted, unique layer indices.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return tuple(range(n_layers))
    if isinstance(spec, str):
        layers = set()
        for part in spec.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    lo, hi = (int(p) for p in part.split("-", 1))
                    if hi < lo:
                        raise ValueError
                    layers.update(range(lo, hi + 1))
                else:
                    layers.add(int(part))
            except ValueError:
                raise UsageError(
                    f"cannot read layer selection {spec!r}: use ranges and lists such as '0-11' or '5,7'"
                ) from None
    else:
        layers = {int(x) for x in spec}
    bad = sorted(x for x in layers if x < 0 or x >= n_layers)
    if bad:
        raise UsageError(
            f"unknown layer(s) {bad}: this model has layers 0-{n_layers - 1}"
        )
    if not layers:
        raise UsageError("the layer selection is empty: name at least one layer")
    return tuple(sorted(layers))


@dataclass(frozen=True)
class Site:
    """A family of neurons in a model, one module per layer.

    Parameters
    ----------
    kind : {"mlp", "mlp-out", "attn", "residual"}
        ``"mlp"``: the MLP's hidden neurons (input of ``down_proj`` in gated MLPs,
        output of ``mlp.act`` in GPT-2 and GPT-NeoX); ``"mlp-out"``: the MLP's output
        (output of ``down_proj``, the units the paper's authors used); ``"attn"``: the
        heads' concatenated outputs (input of the attention output projection);
        ``"residual"``: each block's output (the residual stream).
    architecture : str
        The model's ``config.model_type``.
    module_template : str
        Dotted path to the hooked module, with ``{layer}`` for the layer index.
    hook : {"pre", "post"}
        Whether the neurons are the module's input (``"pre"``) or output (``"post"``).
    width : int
        Neurons per layer.
    n_layers : int
        Number of layers in the model.
    layers : tuple of int
        The layers this site covers (a subset of ``range(n_layers)``).
    head_dim : int
        ``attn`` sites: units per head (unit ``n`` belongs to head ``n // head_dim``); else 0.
    """

    kind: str
    architecture: str
    module_template: str
    hook: str
    width: int
    n_layers: int
    layers: tuple = field(default=())
    head_dim: int = 0

    def __post_init__(self):
        if not self.layers:
            object.__setattr__(self, "layers", tuple(range(self.n_layers)))

    @property
    def n_neurons(self):
        """Total number of neurons covered by the site."""
        return self.width * len(self.layers)

    def module_name(self, layer):
        """Dotted name of the hooked module of ``layer``."""
        return self.module_template.format(layer=layer)

    def modules(self, model):
        """Yield ``(layer, module)`` for each covered layer of ``model``."""
        for layer in self.layers:
            yield layer, _get(model, self.module_name(layer))

    def with_layers(self, layers):
        """A copy of the site restricted to ``layers`` (any :func:`parse_layers` spec)."""
        return Site(self.kind, self.architecture, self.module_template, self.hook,
                    self.width, self.n_layers, parse_layers(layers, self.n_layers), self.head_dim)

    def head(self, neuron):
        """Attention head of each unit of an ``attn`` site (None for other sites)."""
        return None if not self.head_dim else neuron // self.head_dim

    def to_dict(self):
        d = {"kind": self.kind, "architecture": self.architecture,
             "module_template": self.module_template, "hook": self.hook,
             "width": self.width, "n_layers": self.n_layers, "layers": list(self.layers)}
        if self.head_dim:
            d["head_dim"] = self.head_dim
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(d["kind"], d["architecture"], d["module_template"], d["hook"],
                   int(d["width"]), int(d["n_layers"]), tuple(int(x) for x in d["layers"]),
                   int(d.get("head_dim", 0)))


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _root_prefix(model, layers_path):
    """Find the layer list, whether ``model`` is a *ForCausalLM or a bare base model."""
    for prefix in ("", layers_path.split(".")[0] + "."):
        path = layers_path if not prefix else layers_path[len(prefix):]
        try:
            _get(model, path)
            return path
        except AttributeError:
            continue
    raise UsageError(f"cannot find the layers of this model at {layers_path!r}")


def resolve_site(model, kind="mlp", layers=None):
    """Resolve the neuron site of ``model``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal language model (or its base model).
    kind : {"mlp", "mlp-out", "attn", "residual"}
        Which units (see :data:`SITE_KINDS` and the table above).
    layers : str, sequence of int or None
        Layer selection (see :func:`parse_layers`); None means all.

    Returns
    -------
    site : Site
    """
    if kind not in SITE_KINDS:
        raise UsageError(f"unknown neuron site {kind!r}: choose one of {', '.join(SITE_KINDS)}")
    config = _text_config(model.config)
    arch = getattr(config, "model_type", None)
    if arch not in _ARCHITECTURES:
        raise UsageError(
            f"unsupported architecture {arch!r}: llm2nifti knows "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    spec = _ARCHITECTURES[arch]
    layers_path = _root_prefix(model, spec["layers"])
    n_layers = len(_get(model, layers_path))
    head_dim = 0
    if kind == "residual":
        template, hook, width = f"{layers_path}.{{layer}}", "post", config.hidden_size
    else:
        module, hook, width_attr = spec[kind]
        template = f"{layers_path}.{{layer}}.{module}"
        if width_attr == "hidden":
            width = config.hidden_size
        elif width_attr == "heads":
            heads = config.num_attention_heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
            width = heads * head_dim
        else:
            width = getattr(config, width_attr, None) or 4 * config.hidden_size  # GPT-2: n_inner unset
    return Site(kind, arch, template, hook, int(width), n_layers, parse_layers(layers, n_layers),
                int(head_dim))


def mlp_projections(model, site, layer):
    """The weight modules around the MLP neurons of ``layer``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    site : Site
        An ``"mlp"`` site of ``model``.
    layer : int

    Returns
    -------
    writers : list of torch.nn.Module
        Modules whose output units are the neurons (gate and up, or ``c_fc``).
    readers : list of torch.nn.Module
        Modules whose input units are the neurons (down, or ``c_proj``).
    width_attribute : str
        The config attribute that holds the MLP width.
    """
    if site.kind != "mlp":
        raise UsageError(f"only MLP neurons have projections to slice, not {site.kind!r} neurons")
    writers, readers = _PROJECTIONS[site.architecture]
    layer_path = site.module_template.split("{layer}")[0] + str(layer)
    block = _get(model, layer_path)
    return ([_get(block, w) for w in writers], [_get(block, r) for r in readers],
            _ARCHITECTURES[site.architecture]["mlp"][2])
