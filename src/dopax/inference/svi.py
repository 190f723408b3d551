"""SVI driver: compiled update steps, fitting loops, posterior draws from the guide."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import SVI
from numpyro.infer.autoguide import AutoGuide
from numpyro.infer.util import Predictive

from dopax.kernel.tracing import TRACE_LOCK, guarded_jit

__all__ = ["SVIRunResult", "SVIDriver", "check_losses"]

logger = logging.getLogger("dopax")


class SVIRunResult(NamedTuple):
    """Parameters and loss history of an SVI fit.

    Attributes:
        params: The guide's optimised parameters.
        losses: Loss per step.
    """

    params: dict[str, Any]
    losses: np.ndarray


def still_falling(losses: np.ndarray, *, window: int | None = None, tol: float = 1e-3) -> bool:
    """Return whether the loss was still clearly falling at the end of a fit.

    Fits a least-squares line to the last ``2 * window`` losses and calls the
    loss falling when the expected drop over one window is both significant
    (more than 2.5 standard errors, so mini-batch and Monte Carlo noise do
    not count) and material (more than ``tol`` times the loss magnitude).

    Args:
        losses: Loss per step.
        window: Window length (default: a tenth of the steps, or up to half of
            them, at most 50, for short fits).
        tol: Relative drop per window that counts as material.
    """
    losses = np.asarray(losses, dtype=np.float64)
    losses = losses[np.isfinite(losses)]
    if window is None:
        window = max(len(losses) // 10, min(len(losses) // 2, 50))
    if window < 3:
        return len(losses) > 0
    tail = losses[-2 * window :]
    t = np.arange(tail.size, dtype=np.float64)
    t -= t.mean()
    slope = float(t @ (tail - tail.mean()) / (t @ t))
    resid = tail - tail.mean() - slope * t
    se = float(np.sqrt(resid @ resid / max(tail.size - 2, 1) / (t @ t)))
    drop = -slope * window
    scale = max(abs(float(np.median(tail[-window:]))), 1e-12)
    return bool(drop > 2.5 * se * window and drop > tol * scale)


_HINT = (
    "Lower the optimiser's learning rate (e.g. `Adam(1e-3)`), put `X` and `y` on a unit "
    "scale, or use tighter priors."
)


def check_losses(losses: Any, params: Mapping[str, Any]) -> None:
    """Check a fit's losses and final parameters for divergence.

    Args:
        losses: Loss per step of the fit.
        params: The guide's parameters at the end of the fit.

    Raises:
        FitDivergedError: If a loss is NaN or infinite and a parameter is no
            longer finite (no posterior can be drawn from the guide).

    Warns:
        RuntimeWarning: If a loss is NaN or infinite but the parameters ended
            finite (the fit finished; its losses say where to look).
    """
    from dopax._warn import warn
    from dopax.exceptions import FitDivergedError

    values = np.asarray(losses, dtype=np.float64).ravel()
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size == 0:
        return
    step = int(bad[0])
    what = "NaN" if np.isnan(values[step]) else "infinite"
    broken = sorted(
        name
        for name, value in params.items()
        if not all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(value))
    )
    where = f"at step {step + 1} of the {values.size} steps of this fit"
    if broken:
        raise FitDivergedError(
            f"The fit diverged: the SVI loss became {what} {where}, and the guide's "
            f"parameter(s) {broken} are no longer finite, so no posterior can be drawn. "
            f"The model keeps the fit state it had before this call. {_HINT}"
        )
    warn(
        f"The SVI loss was {what} {where} ({bad.size} step(s) in all), though the guide's "
        f"parameters ended finite; check `vi_result.losses`. {_HINT}",
        RuntimeWarning,
    )


class SVIDriver:
    """Runs an :class:`numpyro.infer.SVI` object for a model.

    Args:
        svi: The user's SVI object (never modified).
        steps_per_chunk: Steps run in one compiled ``scan`` of the automatic
            full-batch loop (``ExecutionConfig.svi_steps_per_chunk``).
    """

    def __init__(self, svi: SVI, steps_per_chunk: int = 100) -> None:
        self.svi = svi
        self.steps_per_chunk = int(steps_per_chunk)

    @functools.cached_property
    def _update(self) -> Callable[..., Any]:
        svi = self.svi

        def step(state: Any, static: tuple[tuple[str, Any], ...], args: Mapping[str, Any]) -> Any:
            return svi.update(state, **args, **dict(static))

        return guarded_jit(step, static_argnums=1)

    @functools.cached_property
    def _run_chunk(self) -> Callable[..., Any]:
        svi = self.svi
        length = self.steps_per_chunk

        def chunk(state: Any, static: tuple[tuple[str, Any], ...], args: Mapping[str, Any]) -> Any:
            def body(s: Any, _: Any) -> Any:
                s, loss = svi.update(s, **args, **dict(static))
                return s, loss

            return jax.lax.scan(body, state, None, length=length)

        return guarded_jit(chunk, static_argnums=1)

    def init(
        self, key: jax.Array, static: tuple[tuple[str, Any], ...], args: Mapping[str, Any]
    ) -> Any:
        """Initialise the SVI state.

        Args:
            key: PRNG key for initialisation.
            static: Static kernel arguments.
            args: Array kernel arguments.
        """
        with TRACE_LOCK:
            return self.svi.init(key, **args, **dict(static))

    def step(
        self, state: Any, static: tuple[tuple[str, Any], ...], args: Mapping[str, Any]
    ) -> tuple[Any, jax.Array]:
        """Run one compiled update step.

        Args:
            state: The SVI state.
            static: Static kernel arguments.
            args: Array kernel arguments.
        """
        return self._update(state, static, args)

    def run_full_batch(
        self,
        state: Any,
        static: tuple[tuple[str, Any], ...],
        args: Mapping[str, Any],
        *,
        num_steps: int | None,
        min_steps: int = 1000,
        max_steps: int = 20_000,
        progress: Callable[[int, float], None] | None = None,
    ) -> tuple[Any, np.ndarray]:
        """Run full-batch steps: exactly ``num_steps``, or until converged when ``None``.

        Args:
            state: The SVI state.
            static: Static kernel arguments.
            args: Array kernel arguments.
            num_steps: Steps to run, or ``None`` to stop once the loss settles
                (at least ``min_steps``, at most ``max_steps``).
            min_steps: Least steps of the automatic mode.
            max_steps: Most steps of the automatic mode.
            progress: Called with ``(steps_done, last_loss)`` after each chunk.
        """
        losses: list[np.ndarray] = []
        done = 0
        target = num_steps if num_steps is not None else max_steps
        while done < target:
            n = min(self.steps_per_chunk, target - done)
            if n == self.steps_per_chunk:
                state, chunk_losses = self._run_chunk(state, static, args)
            else:
                chunk = []
                for _ in range(n):
                    state, loss = self._update(state, static, args)
                    chunk.append(loss)
                chunk_losses = jnp.stack(chunk)
            losses.append(np.asarray(chunk_losses))
            done += n
            if progress is not None:
                progress(done, float(losses[-1][-1]))
            if num_steps is None and done >= min_steps:
                history = np.concatenate(losses)
                if not still_falling(
                    history, window=max(self.steps_per_chunk, done // 10), tol=1e-4
                ):
                    break
        return state, np.concatenate(losses) if losses else np.zeros(0, np.float32)

    def run_epochs(
        self,
        state: Any,
        static: tuple[tuple[str, Any], ...],
        batches: Callable[[int], Iterable[Mapping[str, Any]]],
        *,
        epochs: int,
        progress: Callable[[int, float], None] | None = None,
    ) -> tuple[Any, np.ndarray]:
        """Run mini-batch steps over ``epochs`` passes.

        Args:
            state: The SVI state.
            static: Static kernel arguments.
            batches: ``batches(epoch)`` yields the batches of one epoch.
            epochs: Number of passes.
            progress: Called with ``(epoch, mean_loss)`` after each epoch.
        """
        losses: list[jax.Array] = []
        for epoch in range(epochs):
            start = len(losses)
            for batch in batches(epoch):
                state, loss = self._update(state, static, batch)
                losses.append(loss)
            if progress is not None and len(losses) > start:
                progress(epoch + 1, float(jnp.mean(jnp.stack(losses[start:]))))
        out = np.asarray(jnp.stack(losses)) if losses else np.zeros(0, np.float32)
        return state, out

    def params(self, state: Any) -> dict[str, Any]:
        """Return the guide's parameters for a state.

        Args:
            state: The SVI state.
        """
        return self.svi.get_params(state)

    def draw_posterior(
        self,
        key: jax.Array,
        params: Mapping[str, Any],
        num_samples: int,
        static: tuple[tuple[str, Any], ...],
        args: Mapping[str, Any],
        exclude: Iterable[str] = (),
    ) -> dict[str, np.ndarray]:
        """Draw latent values from the guide: the one home of guide sampling.

        Args:
            key: PRNG key.
            params: Guide parameters.
            num_samples: Number of draws.
            static: Static kernel arguments (for guides that need data).
            args: Array kernel arguments (for guides that need data).
            exclude: Site names to drop (the output site, observed sites).
        """
        guide = self.svi.guide
        with TRACE_LOCK:
            if isinstance(guide, AutoGuide):
                draws = guide.sample_posterior(key, dict(params), sample_shape=(num_samples,))
            else:
                draws = Predictive(guide, params=dict(params), num_samples=num_samples)(
                    key, **args, **dict(static)
                )
        skip = set(exclude)
        trace = getattr(guide, "prototype_trace", None)
        if trace is not None:  # the model's own trace says which sites are latent
            skip |= {
                name
                for name, site in trace.items()
                if site["type"] != "sample" or site.get("is_observed")
            }
        return {k: np.asarray(v) for k, v in draws.items() if k not in skip}
