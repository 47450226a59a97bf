"""Where neurons live in a model: the one place that knows how a model is built.

A :class:`Site` says, for each layer it covers, which module(s) carry the units and how
they are read: a forward *pre*-hook (the module's input), a forward hook (its output), or,
for fused mixture-of-experts weights, one of the two expert readers of
:mod:`llm2nifti.experts`. Recording and intervention both place their hooks through
:meth:`Site.parts`, so that a unit found in a scan is exactly the unit an intervention
touches.

Sites are found from the model's structure, not from a list of model names
(:func:`resolve_site`):

1. the decoder's layer list is the module list whose length is the text configuration's
   number of layers, inside the language model (``get_decoder()``) of a multimodal wrapper;
2. in each layer, the children are sorted into roles by their class and attribute names
   (attention, MLP or mixture of experts, state-space or convolutional mixer);
3. inside a block, the *reader* is the linear map whose output width is the model's hidden
   size: its input width is the number of units, whatever it is called (``down_proj``,
   ``c_proj``, ``dense_4h_to_h``, ``fc2``, ``out_proj``, ...);
4. fused experts (3-D weights) are read by the expert readers; a block's other MLPs are its
   shared experts.

A layer without the block a site needs (a Mamba layer has no attention, a pure state-space
model has no MLP) is absent from the site, not zero-filled; layers may differ in width.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import UsageError

__all__ = ["Site", "Part", "SITE_KINDS", "resolve_site", "parse_layers", "mlp_projections",
           "available_sites", "layer_roles"]

SITE_KINDS = ("mlp", "mlp-out", "attn", "residual", "experts", "mixer")
SITE_HELP = {
    "mlp": "the MLP's hidden neurons (input of the projection back to the hidden size); in a "
           "mixture of experts, every routed expert's hidden neurons (0 where not routed) and "
           "the shared experts'",
    "mlp-out": "the MLP (or mixture-of-experts) block's output: hidden-size units",
    "attn": "the attention heads' concatenated outputs (input of the output projection)",
    "residual": "each layer's output (the residual stream)",
    "experts": "each expert's routing weight per token (0 where not routed)",
    "mixer": "a state-space or convolutional mixer's units (input of its output projection)",
}
_HOOKS = ("pre", "post", "routing", "experts")


@dataclass(frozen=True)
class Part:
    """One hooked module of one layer, and the units it contributes.

    Parameters
    ----------
    module : str
        Dotted path of the module from the model's root.
    hook : {"pre", "post", "routing", "experts"}
        ``pre``: the module's input; ``post``: its output; ``routing``: the routing weight of
        each expert (read from a fused-experts module's routing inputs); ``experts``: the
        hidden neurons of each routed expert of a fused-experts module.
    width : int
        Units contributed (``len(experts) * expert_width`` for ``experts`` parts).
    experts : tuple of int
        ``routing`` and ``experts`` parts: the experts covered, in unit order.
    kernel : str
        ``experts``/``routing`` parts: which reader of :mod:`llm2nifti.experts` computes them.
    """

    module: str
    hook: str
    width: int
    experts: tuple = ()
    kernel: str = ""

    @property
    def expert_width(self):
        """Hidden neurons per expert (``experts`` parts); 0 otherwise."""
        return self.width // len(self.experts) if self.hook == "experts" and self.experts else 0

    def to_dict(self):
        d = {"module": self.module, "hook": self.hook, "width": self.width}
        if self.experts:
            d["experts"] = list(self.experts)
        if self.kernel:
            d["kernel"] = self.kernel
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(d["module"], d["hook"], int(d["width"]), tuple(int(e) for e in d.get("experts", ())),
                   d.get("kernel", ""))


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
    """A family of units in a model: one or more hooked modules per covered layer.

    Parameters
    ----------
    kind : {"mlp", "mlp-out", "attn", "residual", "experts", "mixer"}
        See ``llm2nifti sites``. ``"mlp"``: the MLP's hidden neurons (input of ``down_proj``
        in gated MLPs, of ``c_proj`` in GPT-2; every routed and shared expert's in a
        mixture of experts); ``"mlp-out"``: the MLP block's output (the units the paper's
        authors used); ``"attn"``: the heads' concatenated outputs; ``"residual"``: each
        layer's output; ``"experts"``: each expert's routing weight; ``"mixer"``: a
        state-space mixer's units.
    architecture : str
        The language model's ``config.model_type``.
    module_template : str
        Dotted path to the hooked module with ``{layer}`` for the layer index, when every
        covered layer has one module of one width at the same path; else a summary of the
        paths (see :meth:`parts`).
    hook : {"pre", "post", "routing", "experts"}
        How the units of a uniform site are read (the first part's, else).
    width : int
        Units per layer: the largest over the covered layers (see :attr:`widths`).
    n_layers : int
        Number of layers in the model.
    layers : tuple of int
        The layers this site covers (a subset of ``range(n_layers)``).
    head_dim : int
        ``attn`` sites of one head size: units per head (unit ``n`` belongs to head
        ``n // head_dim``); else 0.
    layer_parts : tuple of (int, tuple of Part), optional
        Per covered layer, the parts in unit order, when the site is not uniform (widths or
        paths that differ between layers, several modules per layer, experts). Empty for a
        uniform site, whose parts follow from ``module_template``, ``hook`` and ``width``.
    """

    kind: str
    architecture: str
    module_template: str
    hook: str
    width: int
    n_layers: int
    layers: tuple = field(default=())
    head_dim: int = 0
    layer_parts: tuple = field(default=())

    def __post_init__(self):
        if not self.layers:
            layers = (tuple(l for l, _ in self.layer_parts) if self.layer_parts
                      else tuple(range(self.n_layers)))
            object.__setattr__(self, "layers", layers)

    # ------------------------------------------------------------------ parts
    @property
    def uniform(self):
        """True when every covered layer has one module of ``width`` units at ``module_template``."""
        return not self.layer_parts

    def parts(self, layer):
        """The :class:`Part` objects of ``layer``, in unit order."""
        if self.uniform:
            return (Part(self.module_template.format(layer=layer), self.hook, self.width),)
        for l, parts in self.layer_parts:
            if l == layer:
                return parts
        raise UsageError(f"layer {layer} is not covered by this {self.kind} site")

    def width_of(self, layer):
        """Number of units of ``layer``."""
        return self.width if self.uniform else sum(p.width for p in self.parts(layer))

    @property
    def widths(self):
        """Units of each covered layer, in layer order."""
        return tuple(self.width_of(l) for l in self.layers)

    @property
    def n_neurons(self):
        """Total number of units covered by the site."""
        return sum(self.widths)

    def module_name(self, layer):
        """Dotted name of the (first) hooked module of ``layer``."""
        return self.parts(layer)[0].module

    def modules(self, model):
        """Yield ``(layer, module)`` for each covered layer whose units come from one module."""
        for layer in self.layers:
            parts = self.parts(layer)
            if len(parts) != 1 or parts[0].hook not in ("pre", "post"):
                raise UsageError(f"layer {layer} of this {self.kind} site is read from fused experts "
                                 "or several modules: use Site.parts")
            yield layer, _get(model, parts[0].module)

    @property
    def expert_selection(self):
        """The experts an ``mlp`` or ``experts`` site of a mixture of experts covers, or None (all)."""
        for _, parts in self.layer_parts:
            for p in parts:
                if p.experts:
                    return p.experts
        return None

    def groups(self, layer):
        """Per unit of ``layer``, the expert it belongs to (-1: shared or dense), or None.

        None where the layer has no experts; controls draw random units with the same count
        per group.
        """
        import numpy as np

        parts = self.parts(layer)
        if not any(p.hook in ("experts", "routing") for p in parts):
            return None
        out = []
        for p in parts:
            if p.hook == "experts":
                out.append(np.repeat(np.asarray(p.experts), p.expert_width))
            elif p.hook == "routing":
                out.append(np.asarray(p.experts))
            else:
                out.append(np.full(p.width, -1))
        return np.concatenate(out).astype(np.int64)

    def with_layers(self, layers):
        """A copy of the site restricted to ``layers`` (any :func:`parse_layers` spec)."""
        chosen = parse_layers(layers, self.n_layers)
        missing = sorted(set(chosen) - set(self.layers))
        if missing:
            raise UsageError(f"layer(s) {missing} have no {self.kind} units: this model has them in "
                             f"layers {_ranges(self.layers)}")
        parts = tuple((l, p) for l, p in self.layer_parts if l in chosen)
        return Site(self.kind, self.architecture, self.module_template, self.hook, self.width,
                    self.n_layers, chosen, self.head_dim, parts)

    def head(self, neuron):
        """Attention head of each unit of an ``attn`` site (None for other sites)."""
        return None if not self.head_dim else neuron // self.head_dim

    # --------------------------------------------------------- serialisation
    def to_dict(self):
        d = {"kind": self.kind, "architecture": self.architecture,
             "module_template": self.module_template, "hook": self.hook,
             "width": self.width, "n_layers": self.n_layers, "layers": list(self.layers)}
        if self.head_dim:
            d["head_dim"] = self.head_dim
        if not self.uniform:
            d["widths"] = list(self.widths)
            d["parts"] = {str(l): [p.to_dict() for p in parts] for l, parts in self.layer_parts}
        return d

    @classmethod
    def from_dict(cls, d):
        parts = tuple((int(l), tuple(Part.from_dict(p) for p in ps))
                      for l, ps in sorted(d.get("parts", {}).items(), key=lambda kv: int(kv[0])))
        return cls(d["kind"], d["architecture"], d["module_template"], d["hook"],
                   int(d["width"]), int(d["n_layers"]), tuple(int(x) for x in d["layers"]),
                   int(d.get("head_dim", 0)), parts)


def _ranges(layers):
    """``(0, 1, 2, 5)`` -> ``'0-2,5'``."""
    out, start = [], None
    for i, l in enumerate(layers):
        if start is None:
            start = l
        if i + 1 == len(layers) or layers[i + 1] != l + 1:
            out.append(str(start) if start == l else f"{start}-{l}")
            start = None
    return ",".join(out)


# ---------------------------------------------------------------- structure
def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _hidden_size(config):
    for attr in ("hidden_size", "n_embd", "d_model"):
        v = getattr(config, attr, None)
        if isinstance(v, int):
            return v
    raise UsageError("cannot read the model's hidden size from its configuration")


def _n_layers(config):
    for attr in ("num_hidden_layers", "n_layer", "num_layers", "num_blocks", "n_layers"):
        v = getattr(config, attr, None)
        if isinstance(v, int):
            return v
    return None


_SKIP_TOWERS = re.compile(r"vision|visual|audio|image|speech|encoder|mtp|vit\b|siglip", re.I)


def _find_layers(model, config):
    """Dotted path of the decoder's layer list."""
    import torch.nn as nn

    n = _n_layers(config)
    decoder = None
    get = getattr(model, "get_decoder", None)
    if callable(get):
        try:
            decoder = get()
        except Exception:  # noqa: BLE001 -- some wrappers raise for lack of a decoder
            decoder = None
    names = {id(m): name for name, m in model.named_modules()}
    prefix = names.get(id(decoder), None) if decoder is not None else None
    found = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or not len(mod) or _SKIP_TOWERS.search(name):
            continue
        if n is not None and len(mod) != n:
            continue
        if not all(any(True for _ in m.parameters()) for m in mod):
            continue
        inside = prefix is not None and (prefix == "" or name.startswith(prefix + "."))
        found.append((not inside, name.count("."), name))
    if not found and n is not None:  # a configuration that counts its layers otherwise
        return _find_layers_any(model, prefix)
    if not found:
        raise UsageError("cannot find this model's decoder layers (a module list of "
                         f"{n} layers): is it a decoder-only language model?")
    return sorted(found)[0][2]


def _find_layers_any(model, prefix):
    import torch.nn as nn

    found = [(-len(m), name) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) and not _SKIP_TOWERS.search(name)
             and (prefix is None or prefix == "" or name.startswith(prefix + "."))]
    if not found:
        raise UsageError("cannot find this model's decoder layers: is it a decoder-only language model?")
    return sorted(found)[0][1]


def _is_linear(m):
    import torch.nn as nn

    if isinstance(m, nn.Linear):
        return True
    w = getattr(m, "weight", None)
    return (type(m).__name__ == "Conv1D" and w is not None and w.ndim == 2)


def _io(m):
    """``(in_width, out_width)`` of a linear map (nn.Linear or GPT-2's Conv1D)."""
    import torch.nn as nn

    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    return m.weight.shape[0], m.weight.shape[1]


def _fused_experts(m):
    """True for a module holding fused expert weights (3-D parameters, not a convolution's, or
    a gated MLP's 2-D weights flattened over experts)."""
    import torch.nn as nn

    from .experts import flat_glu

    if isinstance(m, nn.modules.conv._ConvNd):
        return False
    if flat_glu(m) is not None:  # 2-D weights flattened over experts (DBRX)
        return True
    return any(p.ndim == 3 and min(p.shape) > 1 for p in m.parameters(recurse=False)) and (
        hasattr(m, "num_experts") or "expert" in type(m).__name__.lower()
        or any(hasattr(m, a) for a in ("down_proj", "gate_up_proj", "up_proj")))


_ROLE_PATTERNS = (  # (role, pattern on the class name, then on the attribute name)
    ("attn", re.compile(r"attn|attention", re.I)),
    ("mlp", re.compile(r"mlp|ffn|feed_?forward|\bfc\b", re.I)),
    ("mixer", re.compile(r"mamba|mixer|ssm|conv|recurren|lstm|rwkv|deltanet|retention", re.I)),
)


def _listed_experts(mod):
    """True for a block that keeps its experts as a list of MLP modules."""
    import torch.nn as nn

    return any(isinstance(m, nn.ModuleList) and len(m) > 1 and "expert" in name.lower()
               and not _is_linear(m[0]) for name, m in mod.named_modules())


def _role(name, mod):
    """Role of a layer's child module: its structure first, then its class or attribute name."""
    if any(_fused_experts(m) for m in mod.modules()):
        return "moe"
    if _listed_experts(mod):
        return "moe-list"
    for text in (type(mod).__name__, name):
        for role, pattern in _ROLE_PATTERNS:
            if pattern.search(text):
                return role
    return None


def layer_roles(layer):
    """``{role: [(child name, module), ...]}`` for one decoder layer.

    Roles: ``attn``, ``mlp``, ``moe``, ``mixer``. A layer whose linear maps sit directly
    under it (OPT's ``fc1``/``fc2``) is its own ``mlp``.
    """
    roles = {}
    for name, child in layer.named_children():
        if not any(True for _ in child.parameters()):
            continue
        role = _role(name, child)
        if role == "mixer" and not any(_is_linear(m) for m in child.modules()):
            role = None  # a bare convolution or norm
        if role is not None:
            roles.setdefault(role, []).append((name, child))
    direct = [n for n, c in layer.named_children() if _is_linear(c)]
    if direct and "mlp" not in roles and "moe" not in roles:
        roles["mlp"] = [("", layer)]
    return roles


def _reader(block, hidden, skip=()):
    """``(dotted name, module)`` of the linear map of ``block`` that writes the hidden size."""
    linears = [(n, m) for n, m in block.named_modules()
               if _is_linear(m) and not any(n == s or n.startswith(s + ".") for s in skip)]
    if block is not None and _is_linear(block):
        linears = [("", block)]
    if not linears:
        return None
    direct = [(n, m) for n, m in linears if "." not in n] or linears
    writes = [(n, m) for n, m in direct if _io(m)[1] == hidden]
    return writes[-1] if writes else None  # the last one registered: down after gate and up, o after q


def _join(*names):
    return ".".join(n for n in names if n)


# ----------------------------------------------------------- per-layer parts
def _dense_parts(kind, path, block, hidden, skip=()):
    found = _reader(block, hidden, skip)
    if found is None:
        return None
    name, mod = found
    if kind == "mlp":
        return (Part(_join(path, name), "pre", _io(mod)[0]),)
    return (Part(_join(path, name), "post", hidden),)


def _experts_of(block):
    """``(name, module)`` of the fused-experts module inside a MoE block."""
    for name, m in block.named_modules():
        if _fused_experts(m):
            return name, m
    return None


def _moe_parts(kind, path, block, hidden, experts_sel):
    from .experts import describe

    if kind == "mlp-out":
        return (Part(path, "post", hidden),)
    name, experts = _experts_of(block)
    info = describe(experts, block)
    if info.kernel is None:
        raise UsageError(f"the experts at {_join(path, name)} ({type(experts).__name__}) are "
                         f"computed in a way llm2nifti cannot read ({info.reason}): use "
                         "--site mlp-out for this model")
    chosen = tuple(range(info.n_experts)) if experts_sel is None else experts_sel
    bad = [e for e in chosen if e >= info.n_experts]
    if bad:
        raise UsageError(f"unknown expert(s) {bad}: this model's MoE layers have experts "
                         f"0-{info.n_experts - 1}")
    if kind == "experts":
        module = _join(path, info.router) if info.kernel == "dense" else _join(path, name)
        hook = "post" if info.kernel == "dense" else "routing"
        return (Part(module, hook, len(chosen), chosen, info.kernel),)
    parts = [Part(_join(path, name), "experts", len(chosen) * info.expert_width, chosen, info.kernel)]
    for child_name, child in block.named_children():  # shared experts: the block's other MLPs
        if child is experts or child_name == name.split(".")[0]:
            continue
        found = _reader(child, hidden)
        if found is not None:
            parts.append(Part(_join(path, child_name, found[0]), "pre", _io(found[1])[0]))
    return tuple(parts)


def _layer_parts(kind, path, layer, hidden, experts_sel):
    """The parts of one layer for a site ``kind``, or None when the layer has no such units."""
    if kind == "residual":
        return (Part(path, "post", hidden),)
    roles = layer_roles(layer)
    if "moe-list" in roles and kind in ("mlp", "mlp-out", "experts"):
        name, block = roles["moe-list"][0]
        if kind == "mlp-out":
            return (Part(_join(path, name), "post", hidden),)
        raise UsageError(f"the experts of {_join(path, name)} ({type(block).__name__}) are a list of "
                         "modules that llm2nifti does not read one by one: use --site mlp-out")
    if kind in ("mlp", "mlp-out") and "moe" in roles:
        name, block = roles["moe"][0]
        return _moe_parts(kind, _join(path, name), block, hidden, experts_sel)
    if kind == "experts":
        if "moe" not in roles:
            return None
        name, block = roles["moe"][0]
        return _moe_parts(kind, _join(path, name), block, hidden, experts_sel)
    role = {"mlp": "mlp", "mlp-out": "mlp", "attn": "attn", "mixer": "mixer"}[kind]
    if role not in roles:
        return None
    name, block = roles[role][0]
    if name == "":  # linear maps directly under the layer: skip the other blocks
        skip = [n for r, items in roles.items() if r != "mlp" for n, _ in items]
        return _dense_parts("mlp" if kind == "mlp" else "out", path, layer, hidden, skip)
    parts = _dense_parts("mlp" if kind in ("mlp", "attn", "mixer") else "out", _join(path, name),
                         block, hidden)
    return parts


def _template(layers_path, layer_parts):
    """A ``{layer}`` template when every layer has one part at the same relative path."""
    rels = set()
    for layer, parts in layer_parts:
        if len(parts) != 1:
            return None
        prefix = f"{layers_path}.{layer}"
        module = parts[0].module
        if module != prefix and not module.startswith(prefix + "."):
            return None
        rels.add((module[len(prefix):], parts[0].hook, parts[0].width, parts[0].experts))
    if len(rels) != 1:
        return None
    rel, hook, width, experts = rels.pop()
    return (f"{layers_path}.{{layer}}{rel}", hook, width) if not experts else None


def _parse_experts(spec):
    if spec is None:
        return None
    if isinstance(spec, str):
        return parse_layers(spec, 1 << 30)
    return tuple(sorted({int(e) for e in spec}))


def resolve_site(model, kind="mlp", layers=None, experts=None):
    """Resolve a unit site of ``model`` from its structure.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal language model, its base model, or a multimodal model (its language
        model is scanned).
    kind : {"mlp", "mlp-out", "attn", "residual", "experts", "mixer"}
        Which units (see :data:`SITE_KINDS` and ``llm2nifti sites``).
    layers : str, sequence of int or None
        Layer selection (see :func:`parse_layers`); None means every layer that has the site.
    experts : str, sequence of int or None
        ``mlp`` and ``experts`` sites of a mixture of experts: the experts covered
        (``"0-7"``); None means all.

    Returns
    -------
    site : Site

    Raises
    ------
    UsageError
        When the model has no units of this kind, or a selected layer has none.
    """
    if kind not in SITE_KINDS:
        raise UsageError(f"unknown neuron site {kind!r}: choose one of {', '.join(SITE_KINDS)}")
    config = _text_config(model.config)
    arch = getattr(config, "model_type", None) or type(model).__name__
    hidden = _hidden_size(config)
    layers_path = _find_layers(model, config)
    layer_list = _get(model, layers_path)
    n_layers = len(layer_list)
    sel = _parse_experts(experts)
    found = []
    for i, layer in enumerate(layer_list):
        parts = _layer_parts(kind, f"{layers_path}.{i}", layer, hidden, sel)
        if parts:
            found.append((i, parts))
    if not found:
        others = [k for k in available_sites(model) if k != kind]
        raise UsageError(f"this {arch} model has no {kind} units: its sites are {', '.join(others)}")
    if experts is not None and kind not in ("mlp", "experts"):
        raise UsageError("--experts selects experts of the mlp and experts sites only")
    template = _template(layers_path, found)
    if template is not None:
        site = Site(kind, arch, template[0], template[1], int(template[2]), n_layers,
                    tuple(l for l, _ in found), _head_dim(kind, config, template[2]))
    else:
        first = found[0][1][0]
        widths = [sum(p.width for p in parts) for _, parts in found]
        summary = "; ".join(sorted({p.module.split(f"{layers_path}.", 1)[-1].split(".", 1)[-1]
                                    for _, parts in found for p in parts}))
        site = Site(kind, arch, f"{layers_path}.{{layer}}: {summary}", first.hook, max(widths),
                    n_layers, tuple(l for l, _ in found), 0, tuple(found))
    return site if layers is None else site.with_layers(layers)


def _head_dim(kind, config, width):
    if kind != "attn":
        return 0
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    return int(width) // heads if isinstance(heads, int) and heads and width % heads == 0 else 0


def available_sites(model):
    """The site kinds ``model`` offers, in :data:`SITE_KINDS` order."""
    out = []
    for kind in SITE_KINDS:
        try:
            resolve_site_quiet = _resolve_quiet(model, kind)
        except UsageError:
            continue
        if resolve_site_quiet:
            out.append(kind)
    return out


def _resolve_quiet(model, kind):
    config = _text_config(model.config)
    hidden = _hidden_size(config)
    layers_path = _find_layers(model, config)
    for i, layer in enumerate(_get(model, layers_path)):
        if _layer_parts(kind, f"{layers_path}.{i}", layer, hidden, None):
            return True
    return False


_WIDTH_ATTRIBUTES = ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "ffn_hidden_size",
                     "inner_hidden_size")


def mlp_projections(model, site, layer):
    """The weight modules around the MLP neurons of ``layer``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    site : Site
        An ``"mlp"`` site of ``model`` whose units are read from one dense MLP per layer.
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
    parts = site.parts(layer)
    if len(parts) != 1 or parts[0].hook != "pre":
        raise UsageError("pruning cuts the neurons of dense MLPs; this model's MLP units include "
                         "mixture-of-experts weights, which prune does not cut")
    reader_path = parts[0].module
    reader = _get(model, reader_path)
    width = _io(reader)[0]
    block = _get(model, reader_path.rsplit(".", 1)[0])
    hidden = _io(reader)[1]
    writers = [m for n, m in block.named_children() if _is_linear(m) and m is not reader
               and _io(m)[0] == hidden]
    if any(_io(m)[1] != width for m in writers):
        raise UsageError("this MLP computes gate and up in one fused projection; prune cuts "
                         "separate projections only")
    if not writers:
        raise UsageError("cannot find the projections that write this MLP's neurons")
    config = _text_config(model.config)
    attr = next((a for a in _WIDTH_ATTRIBUTES if hasattr(config, a)
                 and getattr(config, a) in (width, None)), None)
    if attr is None:
        raise UsageError("cannot find the configuration field that holds the MLP width")
    return writers, [reader], attr
