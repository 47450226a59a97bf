"""Named sets of neurons: what networks are made of, and what hooks address."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UsageError

__all__ = ["NeuronSet"]

_REQUIRED = ("network", "layer", "neuron")


class NeuronSet:
    """Named sets of ``(layer, neuron)`` pairs of one site.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per (network, neuron) with columns ``network``, ``layer``,
        ``neuron`` and optionally ``site`` and ``z`` (the map value).
    site : str, optional
        Site kind (``"mlp"``); read from the table's ``site`` column if present.

    Examples
    --------
    >>> s = NeuronSet.from_pairs({"a": [(0, 3), (1, 5)]})
    >>> s.per_layer()
    {0: array([3]), 1: array([5])}
    """

    def __init__(self, table, site=None):
        missing = [c for c in _REQUIRED if c not in table.columns]
        if missing:
            raise UsageError(f"neuron table lacks column(s) {missing}: expected network, layer, neuron")
        table = table.copy()
        table["network"] = table["network"].astype(str)
        for col in ("layer", "neuron"):
            values = pd.to_numeric(table[col], errors="coerce")
            bad = values.isna() | (values != values.round())
            if bad.any():
                raise UsageError(f"neuron table: {col} {table[col][bad].iloc[0]!r} is not an integer: "
                                 "layers and neurons are 0-based integer indices")
            if (values < 0).any():
                raise UsageError(f"neuron table: negative {col} {int(values.min())}: layers and "
                                 "neurons are 0-based indices")
            table[col] = values.astype(np.int64)
        if site is None and "site" in table.columns and len(table):
            sites = table["site"].unique()
            if len(sites) > 1:
                raise UsageError(f"neuron table mixes sites {list(sites)}: keep one site per table")
            site = str(sites[0])
        self.site = site or "mlp"
        table["site"] = self.site
        self.table = table.reset_index(drop=True)

    # -------------------------------------------------------------- building
    @classmethod
    def from_pairs(cls, mapping, site="mlp"):
        """From ``{name: [(layer, neuron), ...]}``."""
        rows = [(name, int(l), int(n)) for name, pairs in mapping.items() for l, n in pairs]
        return cls(pd.DataFrame(rows, columns=list(_REQUIRED)), site=site)

    @classmethod
    def from_global(cls, layout, index, name="set"):
        """From layer-major global indices of ``layout``."""
        layer, neuron = layout.neurons(np.asarray(index, dtype=np.int64))
        return cls(pd.DataFrame({"network": name, "layer": layer, "neuron": neuron}),
                   site=layout.site.kind)

    def check_site(self, site):
        """Refuse layers or neuron indices that ``site`` (a :class:`~llm2nifti.sites.Site`) lacks."""
        t = self.table
        outside = sorted(set(t["layer"]) - set(site.layers))
        if outside:
            raise UsageError(f"the neuron table names layer(s) {outside[:5]}, which the model's "
                             f"{site.kind} site lacks (layers {site.layers[0]}-{site.layers[-1]}): "
                             "use the table made from a scan of this model")
        widths = t["layer"].map(dict(zip(site.layers, site.widths)))
        over = t["neuron"] >= widths
        if over.any():
            row = t[over].iloc[0]
            raise UsageError(f"the neuron table names neuron {int(row['neuron'])} of layer "
                             f"{int(row['layer'])}, but the model's {site.kind} site has "
                             f"{site.width_of(int(row['layer']))} there: use the table made from a "
                             "scan of this model")
        return self

    @classmethod
    def from_tsv(cls, path, networks=None):
        """Read a ``networks.tsv`` (or any TSV with network, layer, neuron columns)."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"neuron table {path} not found: pass the networks.tsv `llm2nifti networks` wrote")
        from bids_llm.tsv import read_frame

        try:
            table = read_frame(path, dtype={"network": str})
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise UsageError(f"cannot read neuron table {path} as TSV ({exc}): pass the "
                             "networks.tsv `llm2nifti networks` wrote") from None
        out = cls(table)
        return out.select(networks) if networks is not None else out

    def to_tsv(self, path):
        """Write atomically as TSV (network, site, layer, neuron[, z])."""
        from bids_llm.tsv import write_frame

        cols = ["network", "site", "layer", "neuron"] + [c for c in self.table.columns
                                                          if c not in ("network", "site", "layer", "neuron")]
        write_frame(path, self.table[cols], index=False)

    # ------------------------------------------------------------- querying
    @property
    def names(self):
        return list(dict.fromkeys(self.table["network"]))

    def __len__(self):
        """Number of distinct neurons (the union over networks)."""
        return len(self.pairs())

    def __repr__(self):
        return f"NeuronSet({len(self.names)} networks, {len(self)} neurons, site={self.site!r})"

    def select(self, names):
        """Only the networks named in ``names`` (str or list)."""
        names = [names] if isinstance(names, str) else [str(n) for n in names]
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise UsageError(f"unknown network(s) {unknown}: the table has {self.names}")
        return NeuronSet(self.table[self.table["network"].isin(names)], site=self.site)

    def pairs(self):
        """Sorted unique ``(layer, neuron)`` array of shape (n, 2) over all networks."""
        arr = self.table[["layer", "neuron"]].to_numpy(dtype=np.int64)
        return np.unique(arr, axis=0) if len(arr) else arr.reshape(0, 2)

    def union(self, name="key"):
        """One set holding every neuron of any network."""
        p = self.pairs()
        return NeuronSet(pd.DataFrame({"network": name, "layer": p[:, 0], "neuron": p[:, 1]}),
                         site=self.site)

    def per_layer(self):
        """``{layer: sorted neuron indices}`` of the union, for hooks."""
        p = self.pairs()
        return {int(l): p[p[:, 0] == l, 1] for l in np.unique(p[:, 0])}

    def counts_per_layer(self):
        """``{layer: count}`` of the union."""
        return {l: len(v) for l, v in self.per_layer().items()}

    def global_index(self, layout):
        """Layer-major global indices in ``layout`` of the union."""
        p = self.pairs()
        if not len(p):
            return np.zeros(0, dtype=np.int64)
        return np.asarray(layout.global_index(p[:, 0], p[:, 1]), dtype=np.int64)

    def mask(self, layout):
        """Boolean vector over ``layout``'s neurons (layer-major)."""
        m = np.zeros(layout.n_neurons, dtype=bool)
        m[self.global_index(layout)] = True
        return m
