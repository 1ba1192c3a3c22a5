"""The modules that register pipeline steps; every module here is imported once (the summaries
derived from the steps are registered by :mod:`bh_routing.study.summaries`).

``seed`` (the seven steps of the original notebook) is imported first, then every other module of
this package in name order, so a new step is one new module here; nothing else to edit. See
:mod:`bh_routing.study.pipeline` for the recipe.
"""

from importlib import import_module
from pkgutil import iter_modules

from . import notebook  # noqa: F401  (first: its steps keep their order in the results)

for _m in sorted(m.name for m in iter_modules(__path__)):
    import_module(f"{__name__}.{_m}")
