"""Report: what a person looks at.

Takes what the other stages wrote (evaluation summaries, recurrence, networks, localizer maps,
connectomes, fingerprints, diffs), found through :mod:`bids_llm.outputs`; gives one
self-contained HTML page per participant. The figures are :mod:`llm2nifti.plots`' (also
importable from here, as before).
"""

from .._lazy import lazy_exports

_EXPORTS = {"report": ".html", "Section": ".html",
            **{name: "llm2nifti.plots" for name in (
                "plot_interventions", "plot_curve", "plot_fnk", "plot_diff_layers", "METRICS",
                "plot_flatmap", "flat_values", "plot_connectome_matrix", "plot_connectome_pair",
                "plot_fingerprint", "plot_depths", "plot_rsa")}}

__all__ = ["report", "Section"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
