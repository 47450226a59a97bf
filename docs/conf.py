"""Sphinx configuration of the llm2nifti documentation (``make docs``)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import llm2nifti  # noqa: E402

project = "llm2nifti"
copyright = "the llm2nifti developers"
version = release = llm2nifti.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
templates_path = ["_templates"]
root_doc = "index"

# Every cross-reference must resolve. The build is offline, so references into other
# projects' documentation (numpy, pandas, nibabel, torch, ...) cannot; they are listed here.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|pandas|pd|nibabel|nib|torch|transformers|sklearn|scipy|nilearn|dask|"
               r"distributed|matplotlib|pathlib|collections|typing|concurrent|filelock|jinja2|"
               r"click|os|io|enum|dataclasses|contextlib|threading|builtins)(\..*)?"),
    (r"py:class", r"(path|path-like|str|int|float|bool|dict|list|tuple|callable|sequence|iterable|"
                  r"mapping|array|array-like|ndarray|DataFrame|Path|None|optional|object|"
                  r"Module|PreTrainedModel|Nifti1Image|Tensor|module|bytes|type)"),
]

autosummary_generate = True
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "inherited-members": False, "undoc-members": False}
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_class_members_toctree = False

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

html_theme = "pydata_sphinx_theme"
html_title = f"llm2nifti {release}"
html_static_path = []
html_theme_options = {
    "navigation_with_keys": False,
    "header_links_before_dropdown": 4,
    "show_toc_level": 2,
    "icon_links": [],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False
html_context = {"default_mode": "auto"}  # light or dark as the reader's system says

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"(__init__|tasks)",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "plot_gallery": os.environ.get("LLM2NIFTI_DOCS_GALLERY", "True"),
    "abort_on_example_error": True,
    "show_memory": False,
    "min_reported_time": 1,
    "write_computation_times": False,  # its page loads scripts from the web; the site is offline
}


def _resolve_by_name(app, env, node, contnode):
    """Resolve a short Python reference (``NeuronLayout.unfold``, ``UsageError``) to the one
    documented object whose name ends so; ambiguous or unknown names stay unresolved (and warn).

    Docstrings name objects relative to the module that defines them, while the reference
    documents each object where the package exports it.
    """
    if node.get("refdomain") != "py":
        return None
    parts = node["reftarget"].lstrip(".~").split(".")
    domain = env.get_domain("py")
    for k in range(len(parts)):  # llm2nifti.intervention.fnk.fn_at_k, then fnk.fn_at_k, ...
        tail = ".".join(parts[k:])
        found = [name for name in domain.objects if name == tail or name.endswith("." + tail)]
        if found:
            break
    # a class documented where it is exported is also registered under its defining module
    targets = {(domain.objects[name].docname, domain.objects[name].node_id) for name in found}
    if len(targets) != 1:
        return None
    from sphinx.util.nodes import make_refnode

    docname, node_id = targets.pop()
    return make_refnode(app.builder, node["refdoc"], docname, node_id, contnode, found[0])


def _skip_inherited_from_elsewhere(app, what, name, obj, skip, options):
    """Leave out what scikit-learn adds to an estimator (``set_fit_request`` and the like)."""
    module = getattr(obj, "__module__", "") or ""
    return True if module.startswith("sklearn") else None


def setup(app):
    app.connect("missing-reference", _resolve_by_name)
    app.connect("autodoc-skip-member", _skip_inherited_from_elsewhere)
