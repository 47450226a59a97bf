"""Report: what a person looks at.

Takes the tables the other stages write (evaluation summaries, recurrence, networks, localizer
maps, connectomes); gives figures (PNG) and one self-contained HTML page per participant.
"""

from .._lazy import lazy_exports

_EXPORTS = {"plot_interventions": ".figures", "plot_curve": ".figures", "plot_fnk": ".figures", "plot_diff_layers": ".figures",
            "METRICS": ".figures", "plot_flatmap": ".maps", "flat_values": ".maps",
            "plot_connectome_matrix": ".matrices", "plot_connectome_pair": ".matrices",
            "plot_fingerprint": ".comparison", "plot_depths": ".comparison", "plot_rsa": ".comparison",
            "report": ".html", "Section": ".html"}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
