"""The kernel specification discovered on first trace, and body validation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from dopax.exceptions import KernelValidationError
from dopax.kernel.signature import kernel_parameters

__all__ = ["KernelSpec", "build_spec", "merge_specs", "observed_sites", "validate_trace"]


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """What the first trace of a kernel revealed.

    A spec exists only once the kernel has been traced; :attr:`traced` is
    kept for the aimz API and is always ``True``. A kernel may branch on
    whether its output is given (``if y is None: ...``): fitting traces both
    branches and the spec holds the sites of either.

    Attributes:
        sample_sites: Names of the latent (unobserved) sample sites, in trace order.
        return_sites: The output site first, then every deterministic site.
        output_observed: Whether the output site was observed in the trace
            (``True`` when traced with data for the output).
        param_sites: Names of the kernel's ``numpyro.param`` sites (point
            estimates: an SVI fit's values replace their initial values).
    """

    sample_sites: tuple[str, ...]
    return_sites: tuple[str, ...]
    output_observed: bool
    param_sites: tuple[str, ...] = ()

    @property
    def traced(self) -> bool:
        """Whether the kernel has been traced (always ``True`` for a spec)."""
        return True


def validate_trace(
    trace: Mapping[str, Any],
    kernel: Callable[..., Any],
    param_output: str,
    *,
    fitting: bool,
) -> None:
    """Check a kernel's trace for what dopax requires of the body.

    Args:
        trace: The trace of one run of the kernel.
        kernel: The NumPyro model function.
        param_output: Name of the output site.
        fitting: Whether the trace comes from a fitting call (then the output
            must be an observed sample site).

    Raises:
        KernelValidationError: Naming the offending site and the fix.
    """
    bad = [name for name in trace if "/" in name]
    if bad:
        raise KernelValidationError(
            f"Site name(s) {bad} contain '/', which DataTree forbids in variable names; "
            "rename the site(s) (e.g. use '_' instead)."
        )
    if param_output not in trace:
        raise KernelValidationError(
            f"Kernel has no site named {param_output!r} (`param_output`); add "
            f"`numpyro.sample({param_output!r}, ..., obs={param_output})` to the kernel "
            "or set `param_output` to the name of its output site."
        )
    site = trace[param_output]
    if fitting and not (site["type"] == "sample" and site.get("is_observed")):
        raise KernelValidationError(
            f"The output site {param_output!r} must be an observed sample site when fitting: "
            f"use `numpyro.sample({param_output!r}, dist, obs={param_output})`."
        )
    clash = sorted(set(kernel_parameters(kernel)) & {n for n in trace if n != param_output})
    if clash:
        raise KernelValidationError(
            f"Kernel parameter(s) {clash} share their name with a site; rename the site(s) "
            "or the parameter(s)."
        )


def build_spec(trace: Mapping[str, Any], param_output: str) -> KernelSpec:
    """Build the :class:`KernelSpec` of a validated trace.

    Args:
        trace: The trace of one run of the kernel.
        param_output: Name of the output site.
    """
    sample_sites = tuple(
        name
        for name, site in trace.items()
        if site["type"] == "sample" and not site.get("is_observed") and name != param_output
    )
    deterministic = tuple(
        name
        for name, site in trace.items()
        if site["type"] == "deterministic" and name != param_output
    )
    out = trace[param_output]
    return KernelSpec(
        sample_sites=sample_sites,
        return_sites=(param_output, *deterministic),
        output_observed=bool(out.get("is_observed")),
        param_sites=tuple(name for name, site in trace.items() if site["type"] == "param"),
    )


def merge_specs(first: KernelSpec, second: KernelSpec) -> KernelSpec:
    """Return the spec holding the sites of both (e.g. the two branches on ``y is None``).

    Args:
        first: A spec; its order comes first.
        second: Another spec of the same kernel.
    """

    def union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*a, *b)))

    return KernelSpec(
        sample_sites=union(first.sample_sites, second.sample_sites),
        return_sites=union(first.return_sites, second.return_sites),
        output_observed=first.output_observed or second.output_observed,
        param_sites=union(first.param_sites, second.param_sites),
    )


def observed_sites(trace: Mapping[str, Any]) -> tuple[str, ...]:
    """Return the names of the observed sample sites of a trace.

    Args:
        trace: The trace of one run of the kernel.
    """
    return tuple(
        name
        for name, site in trace.items()
        if site["type"] == "sample" and site.get("is_observed") and not name.endswith("__CF")
    )
