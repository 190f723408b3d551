"""SVI and MCMC objects recorded as classes and constructor arguments, and rebuilt from them.

NumPyro keeps most constructor arguments as attributes (``prefix`` or
``_init_scale``), so a guide, an ELBO, a sampler or an ``MCMC`` object is
recorded by its class and the attribute behind each argument of its
signature; rebuilding calls the class again. Optimizers keep their settings
in closures: those of :mod:`numpyro.optim` (Adam, ClippedAdam, SGD, ...) are
read from the closure of their update rule, rebuilt, and checked to take the
same steps bit for bit. Whatever cannot be recorded this way (optax
optimizers, ``AutoGuideList``, custom guide classes, samplers wrapping other
samplers) raises :class:`~dopax.persist.source.NotRecordableError`; the saved model then
needs ``inference=`` or ``allow_pickle=True`` at load.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, SVI
from numpyro.infer.autoguide import AutoGuide

from dopax.persist.allowed import COMPOSITE_GUIDES, SAMPLERS
from dopax.persist.source import (
    CodeFile,
    NotRecordableError,
    importable_ref,
    load_code,
    resolve_ref,
)
from dopax.persist.values import UntrustedError, decode, encode, maker_call

__all__ = ["describe_inference", "rebuild_inference"]

#: Attributes of numpyro optimizers that are not settings.
_OPTIM_FUNCTIONS = frozenset({"init_fn", "update_fn", "get_params_fn"})


def _simple(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _attr(obj: Any, name: str) -> Any:
    for attr in (name, f"_{name}"):
        if attr in vars(obj):
            return vars(obj)[attr]
    raise NotRecordableError(
        f"{type(obj).__name__} keeps no attribute for its argument {name!r}, so it cannot be "
        "rebuilt from its settings"
    )


def _describe(obj: Any, fixed: dict[str, Any], code: CodeFile) -> dict[str, Any]:
    """Record ``obj`` as its class and constructor arguments.

    Args:
        obj: The object.
        fixed: Arguments supplied at rebuild time (the kernel, the sampler),
            with the value the object must hold for them.
        code: Where functions of scripts go.
    """
    cls = type(obj)
    ref = importable_ref(cls)
    if ref is None:
        raise NotRecordableError(f"the class {cls.__qualname__} does not import")
    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(cls).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = _attr(obj, name)
        if name in fixed:
            if value is not fixed[name]:
                raise NotRecordableError(f"its {name!r} is not the model's own")
            continue
        kwargs[name] = encode(value, code)
    desc = {"class": ref, "kwargs": kwargs}
    rebuilt = _rebuild(desc, fixed, None if not code else _probe_module(code))
    same = {
        k: v
        for k, v in vars(obj).items()
        if _simple(v) and k in vars(rebuilt) and _simple(vars(rebuilt)[k])
    }
    differ = sorted(k for k, v in same.items() if vars(rebuilt)[k] != v)
    if differ:
        raise NotRecordableError(f"{cls.__name__} rebuilt from its settings differs in {differ}")
    return desc


def _probe_module(code: CodeFile) -> types.ModuleType:
    try:
        return load_code(code.text("dopax probe"), "probe")
    except Exception as err:
        raise NotRecordableError(f"its code file does not run ({err})") from err


def _rebuild(
    desc: Any,
    fixed: dict[str, Any],
    code: types.ModuleType | None,
    allow: Callable[[str], bool] | None = None,
    where: str = "inference",
) -> Any:
    """Call the recorded class with the recorded arguments (and ``fixed``).

    Args:
        desc: ``{"class": ref, "kwargs": {...}}``.
        fixed: Arguments supplied here (the kernel, the sampler).
        code: The loaded code file, if any.
        allow: Which references may be called (``None``: all; see
            :func:`dopax.persist.values.decode`).
        where: Where the record sits, for messages.
    """
    if not isinstance(desc, dict) or not isinstance(desc.get("class"), str):
        raise ValueError(f"{where}: a recorded object needs a `class` reference.")
    ref = desc["class"]
    if ":" not in ref:
        raise ValueError(f"{where}.class: {ref!r} is not a `module:name` reference.")
    if allow is not None and not allow(ref):
        raise UntrustedError(f"{where}.class", repr(ref))
    raw = desc.get("kwargs", {})
    if not isinstance(raw, dict) or set(raw) & set(fixed):
        raise ValueError(f"{where}.kwargs: not a mapping of constructor arguments.")
    kwargs = {k: decode(v, code, allow=allow, where=f"{where}.kwargs.{k}") for k, v in raw.items()}
    cls = resolve_ref(ref)
    return cls(**fixed, **kwargs)


def _steps(optim: Any) -> list[np.ndarray]:
    """Return the state leaves after two update steps from a fixed start (a fingerprint)."""
    params = {"w": jnp.asarray([0.5, -1.5, 3.0, 0.0], jnp.float32)}
    grads = (
        {"w": jnp.asarray([0.1, -20.0, 3.0, 1e-3], jnp.float32)},
        {"w": jnp.asarray([-5.0, 0.3, 40.0, 2.0], jnp.float32)},
    )
    state = optim.init(params)
    for g in grads:
        state = optim.update(g, state)
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


def _describe_optim(optim: Any, code: CodeFile) -> dict[str, Any]:
    from numpyro.optim import Minimize

    cls = type(optim)
    ref = importable_ref(cls)
    if isinstance(optim, Minimize) and ref is not None:
        return {"class": ref, "kwargs": encode({"method": optim._method, **optim._kwargs})["dict"]}
    inner = getattr(optim.update_fn, "__wrapped__", None)
    if ref is None or inner is None or ref == "numpyro.optim:_NumPyroOptim":
        raise NotRecordableError(
            f"the optimizer {cls.__name__} keeps its settings where dopax cannot read them "
            "(optax optimizers among them)"
        )
    kwargs = maker_call(inner, code)["kwargs"]
    for name, value in vars(optim).items():
        if name not in _OPTIM_FUNCTIONS:
            kwargs[name] = encode(value, code)
    desc = {"class": ref, "kwargs": kwargs}
    rebuilt = _rebuild(desc, {}, None)
    same = all(
        a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
        for a, b in zip(_steps(optim), _steps(rebuilt), strict=True)
    )
    if not same:
        raise NotRecordableError(
            f"the optimizer {cls.__name__} rebuilt from its settings steps differently"
        )
    return desc


def _describe_guide(guide: Any, kernel: Any, code: CodeFile) -> dict[str, Any]:
    if isinstance(guide, AutoGuide):
        module = type(guide).__module__
        if module != "numpyro.infer.autoguide" or type(guide).__name__ in COMPOSITE_GUIDES:
            raise NotRecordableError(
                f"the guide {type(guide).__name__} is not a plain NumPyro AutoGuide"
            )
        return {"autoguide": _describe(guide, {"model": kernel}, code)}
    if guide is kernel:
        raise NotRecordableError("the guide is the kernel itself")
    return {"function": encode(guide, code)}


def describe_inference(inference: Any, kernel: Any, code: CodeFile) -> dict[str, Any]:
    """Record an SVI or MCMC object built for ``kernel``.

    Args:
        inference: The model's ``numpyro.infer.SVI`` or ``numpyro.infer.MCMC``.
        kernel: The model's kernel (rebuilt objects get the loaded one).
        code: Where functions of scripts (a guide function) go.

    Raises:
        NotRecordableError: Saying which part cannot be recorded.
    """
    if isinstance(inference, SVI):
        if inference.model is not kernel:
            raise NotRecordableError("the SVI object was built for another model function")
        return {
            "kind": "svi",
            "guide": _describe_guide(inference.guide, kernel, code),
            "optim": _describe_optim(inference.optim, code),
            "loss": _describe(inference.loss, {}, code),
            "static_kwargs": encode(dict(inference.static_kwargs), code),
        }
    if isinstance(inference, MCMC):
        sampler = inference.sampler
        if type(sampler).__name__ not in SAMPLERS or importable_ref(type(sampler)) is None:
            raise NotRecordableError(f"the sampler {type(sampler).__name__} wraps other samplers")
        return {
            "kind": "mcmc",
            "sampler": _describe(sampler, {"model": kernel}, code),
            "mcmc": _describe(inference, {"sampler": sampler}, code),
        }
    raise NotRecordableError(f"{type(inference).__name__} is neither SVI nor MCMC")


def rebuild_inference(
    desc: dict[str, Any],
    kernel: Any,
    code: types.ModuleType | None,
    allow: Callable[[str], bool] | None = None,
) -> Any:
    """Return a new SVI or MCMC object for ``kernel`` from what :func:`describe_inference` recorded.

    Args:
        desc: The record.
        kernel: The (loaded) kernel.
        code: The loaded code file, if any.
        allow: Which references the record may name (``None``: all, the
            code file included); see :func:`dopax.persist.allowed.is_allowed`.

    Raises:
        UntrustedError: If the record names something ``allow`` refuses
            (only allowed constructors have been called then).
        ValueError: For a record :func:`describe_inference` did not write.
    """
    w = "inference"
    if not isinstance(desc, dict):
        raise ValueError(f"{w}: not a recorded SVI or MCMC object.")
    if desc.get("kind") == "svi":
        g = desc.get("guide")
        if not isinstance(g, dict):
            raise ValueError(f"{w}.guide: not a recorded guide.")
        if "autoguide" in g:
            guide = _rebuild(g["autoguide"], {"model": kernel}, code, allow, f"{w}.guide.autoguide")
        else:
            guide = decode(g.get("function"), code, allow=allow, where=f"{w}.guide.function")
        optim = _rebuild(desc.get("optim"), {}, code, allow, f"{w}.optim")
        loss = _rebuild(desc.get("loss"), {}, code, allow, f"{w}.loss")
        static = decode(desc.get("static_kwargs"), code, allow=allow, where=f"{w}.static_kwargs")
        if not isinstance(static, dict):
            raise ValueError(f"{w}.static_kwargs: not a mapping.")
        return SVI(kernel, guide, optim, loss, **static)
    if desc.get("kind") != "mcmc":
        raise ValueError(f"{w}.kind: {desc.get('kind')!r} is neither 'svi' nor 'mcmc'.")
    sampler = _rebuild(desc.get("sampler"), {"model": kernel}, code, allow, f"{w}.sampler")
    return _rebuild(desc.get("mcmc"), {"sampler": sampler}, code, allow, f"{w}.mcmc")
