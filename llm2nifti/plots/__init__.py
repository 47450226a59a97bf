"""Figures: the PNG files written beside a derivative's tables, and the pictures the report
pages embed.

Every stage that writes a derivative draws through here (:mod:`llm2nifti.analysis` its
connectomes, localizer maps, fingerprints and diffs; :mod:`llm2nifti.intervention` its
evaluation curves), and :mod:`llm2nifti.report` builds its pages from the same figures: no
stage imports the report.
"""

from .._lazy import lazy_exports

_EXPORTS = {"plot_interventions": ".figures", "plot_curve": ".figures", "plot_fnk": ".figures",
            "plot_diff_layers": ".figures", "METRICS": ".figures", "plot_flatmap": ".maps",
            "flat_values": ".maps", "plot_connectome_matrix": ".matrices",
            "plot_connectome_pair": ".matrices", "plot_fingerprint": ".comparison",
            "plot_depths": ".comparison", "plot_rsa": ".comparison"}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
