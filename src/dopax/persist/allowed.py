"""The constructors a saved model's manifest may name when no code is trusted.

A manifest records its SVI or MCMC object as classes and functions named
``module:qualname`` (see :mod:`dopax.persist.inference`). Loading without
``trust_code=True`` calls only those that :func:`is_allowed` accepts: NumPyro's
own guides, ELBOs, samplers, ``MCMC``, optimizers and initialisation
strategies, the kinetic energy of its HMC, and the learning-rate schedules of
``jax.example_libraries.optimizers``. Each of them only builds an object from
plain values; none reads a file, starts a process or runs code given to it as
text. Anything else a manifest names (``subprocess:run``, ``os:system``, a
function of the user's own module or of ``kernel.py``) needs the caller's
opt-in, or the object itself.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["is_allowed"]

#: Guides that hold other guides or models, which their settings do not describe.
COMPOSITE_GUIDES = frozenset({"AutoGuideList", "AutoSemiDAIS", "AutoSurrogateLikelihoodDAIS"})
#: Samplers recorded by their settings (others wrap inner samplers).
SAMPLERS = frozenset({"HMC", "NUTS", "SA", "BarkerMH", "AIES", "ESS"})
#: Learning-rate schedules of ``jax.example_libraries.optimizers`` (plain numbers in, a
#: function of the step out).
SCHEDULES = frozenset(
    {
        "constant",
        "exponential_decay",
        "inverse_time_decay",
        "polynomial_decay",
        "piecewise_constant",
    }
)


def _guide(obj: Any) -> bool:
    from numpyro.infer.autoguide import AutoGuide

    return isinstance(obj, type) and issubclass(obj, AutoGuide) and obj is not AutoGuide


def _elbo(obj: Any) -> bool:
    from numpyro.infer.elbo import ELBO

    return isinstance(obj, type) and issubclass(obj, ELBO) and obj is not ELBO


def _sampler(obj: Any) -> bool:
    from numpyro.infer.mcmc import MCMCKernel

    return isinstance(obj, type) and issubclass(obj, MCMCKernel) and obj.__name__ in SAMPLERS


def _mcmc(obj: Any) -> bool:
    from numpyro.infer.mcmc import MCMC

    return obj is MCMC


def _optim(obj: Any) -> bool:
    from numpyro.optim import Minimize, _NumPyroOptim

    if not isinstance(obj, type):
        return False
    return obj is Minimize or (issubclass(obj, _NumPyroOptim) and obj is not _NumPyroOptim)


def _init_strategy(obj: Any) -> bool:
    return inspect.isfunction(obj) and obj.__name__.startswith("init_to_")


def _kinetic(obj: Any) -> bool:
    return inspect.isfunction(obj) and obj.__name__ == "euclidean_kinetic_energy"


def _schedule(obj: Any) -> bool:
    return inspect.isfunction(obj) and obj.__name__ in SCHEDULES


#: Module to the test an object defined there must pass.
_RULES: dict[str, Callable[[Any], bool]] = {
    "numpyro.infer.autoguide": _guide,
    "numpyro.infer.elbo": _elbo,
    "numpyro.infer.hmc": _sampler,
    "numpyro.infer.sa": _sampler,
    "numpyro.infer.barker": _sampler,
    "numpyro.infer.ensemble": _sampler,
    "numpyro.infer.mcmc": _mcmc,
    "numpyro.optim": _optim,
    "numpyro.infer.initialization": _init_strategy,
    "numpyro.infer.hmc_util": _kinetic,
    "jax.example_libraries.optimizers": _schedule,
}


def is_allowed(ref: Any) -> bool:
    """Return whether a manifest may name ``ref`` without the caller trusting its code.

    The reference must be ``module:name`` with a module of the allow-list (a
    NumPyro or JAX module, imported only then) and a name defined in that
    module itself that passes the module's test (a guide class, an ELBO
    class, an optimizer class, ...). Nothing else is imported or resolved.

    Args:
        ref: The recorded reference.
    """
    if not isinstance(ref, str):
        return False
    module_name, sep, name = ref.partition(":")
    rule = _RULES.get(module_name)
    if not sep or rule is None or not name.isidentifier():
        return False
    if name in COMPOSITE_GUIDES:
        return False
    module = importlib.import_module(module_name)
    obj = vars(module).get(name)
    if obj is None or getattr(obj, "__module__", None) != module_name:
        return False
    if getattr(obj, "__qualname__", None) != name:
        return False
    return bool(rule(obj))
