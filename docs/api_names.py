"""The public names the API reference documents, module by module (``make docs`` writes api.rst).

Each object is documented once, at the exporting module nearest to the one that defines it
(``scan`` at ``llm2nifti.acquisition``, ``Dataset`` at ``bids_llm.dataset``); the other
modules that export it list it as a link. ``tests/test_docs.py`` checks that every name of every ``__all__`` is here.
"""

import importlib
import inspect
from pathlib import Path

MODULES = [
    ("llm2nifti", "The package: the objects everything uses"),
    ("llm2nifti.acquisition", "Acquisition: convert a model reading text"),
    ("llm2nifti.analysis", "Analysis: decomposition, networks, GLM, connectivity, comparison"),
    ("llm2nifti.intervention", "Intervention: inhibit, retain, amplify; controls; pruning"),
    ("llm2nifti.report", "Report: the HTML page"),
    ("llm2nifti.plots", "Figures"),
    ("llm2nifti.defaults", "Defaults"),
    ("llm2nifti.layout", "Neuron layout"),
    ("llm2nifti.sites", "Unit sites"),
    ("llm2nifti.experts", "Mixture-of-experts units"),
    ("llm2nifti.models", "Loading models"),
    ("llm2nifti.sources", "Model sources: folders, GGUF, Ollama"),
    ("llm2nifti.neuronset", "Neuron sets"),
    ("llm2nifti.memory", "Memory estimates"),
    ("llm2nifti.interrupts", "Interruption"),
    ("llm2nifti.errors", "Errors"),
    ("llm2nifti.tiny", "Tiny models for tests"),
    ("llm2nifti.simulate", "Simulated listeners (planted truth)"),
    ("bids_llm.dataset", "bids_llm: the dataset"),
    ("bids_llm.naming", "bids_llm: BIDS names"),
    ("bids_llm.events", "bids_llm: events and documents"),
    ("bids_llm.tsv", "bids_llm: tables every reader reads whole"),
    ("bids_llm.io", "bids_llm: atomic writes"),
    ("bids_llm.derivatives", "bids_llm: derivative folders"),
    ("bids_llm.outputs", "bids_llm: the table of outputs"),
    ("bids_llm.fmriprep", "bids_llm: human fMRI datasets (fMRIPrep)"),
    ("bids_llm.space", "bids_llm: the space-neurons view"),
]


def public(module):
    mod = importlib.import_module(module)
    return [n for n in mod.__all__ if n != "__version__"]


def _key(module, name, obj):
    return id(obj) if inspect.isclass(obj) or inspect.isroutine(obj) else (module, name)


def _shared(a, b):
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def sections():
    """``[(module, title, documented, links)]``: names documented in each module, and links."""
    home = {}
    for module, _ in MODULES:  # the exporter sharing the longest prefix with the definer
        mod = importlib.import_module(module)
        for name in public(module):
            obj = getattr(mod, name)
            defined = getattr(obj, "__module__", None) or module
            key = _key(module, name, obj)
            if key not in home or _shared(module, defined) > _shared(home[key][0], defined):
                home[key] = (module, name)
    out = []
    for module, title in MODULES:
        mod = importlib.import_module(module)
        documented, links = [], []
        for name in public(module):
            where = home[_key(module, name, getattr(mod, name))]
            if where == (module, name):
                documented.append(name)
            else:
                links.append((name, ".".join(where)))
        out.append((module, title, documented, links))
    return out


def api_rst():
    lines = ["API reference", "=============", "",
             "Every public name of ``llm2nifti`` and ``bids_llm``, from its docstring. A name",
             "exported by several modules (``llm2nifti.scan`` is ``llm2nifti.acquisition.scan``)",
             "is documented once, in the module nearest to where it is defined.", ""]
    for module, title, documented, links in sections():
        lines += [title, "-" * len(title), "", f".. automodule:: {module}", "   :no-members:", "",
                  f".. currentmodule:: {module}", ""]
        if documented:
            lines += [".. autosummary::", "   :toctree: generated/", "   :nosignatures:", ""]
            lines += [f"   {name}" for name in documented] + [""]
        if links:
            lines += ["Also exported here:", ""] + [
                f"- ``{module}.{name}``: :py:obj:`{target}`" for name, target in links] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(__file__).with_name("api.rst")
    text = api_rst()
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
