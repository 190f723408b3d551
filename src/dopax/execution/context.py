"""What the engine keeps per model: the kernel, its spec, and caches."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from typing import Any

from dopax.config import ExecutionConfig
from dopax.data import ArrayLoader
from dopax.execution.compile_cache import use_compilation_cache
from dopax.kernel.signature import check_reserved_kwargs
from dopax.kernel.spec import KernelSpec, build_spec, merge_specs, validate_trace
from dopax.sampling.explain import InputSchema as FittedShapes
from dopax.sampling.explain import explain
from dopax.sampling.inputs import InputSchema, input_schema
from dopax.sampling.prepare import BoundArgs, bind_args, read_rows
from dopax.sampling.probe import probe_sites
from dopax.streaming.targets import TempFolder

__all__ = ["ModelContext"]

#: Most entries a per-model cache keeps before it is cleared.
_CACHE_ENTRIES = 256


@dataclasses.dataclass(eq=False)
class ModelContext:
    """The engine's view of one model: kernel, names, spec, caches, temporary folder.

    Attributes:
        kernel: The NumPyro model function.
        param_input: Name of the kernel's input argument.
        param_output: Name of the kernel's output argument and site.
        spec: What the first trace revealed, or ``None`` before it.
        inputs: The arguments of the last fitting call (a saved model's
            input schema), or ``None`` before a fit.
        plans: Forward plans by pass and input signature.
        sizes: Sizing probe results by program and shapes.
        fitted_inputs: The shapes of the last fit's inputs, or ``None``;
            errors about a later call's data compare with them.
    """

    kernel: Callable[..., Any]
    param_input: str
    param_output: str
    spec: KernelSpec | None = None
    inputs: InputSchema | None = None
    plans: dict[Any, Any] = dataclasses.field(default_factory=dict)
    sizes: dict[Any, Any] = dataclasses.field(default_factory=dict)
    fitted_inputs: FittedShapes | None = None
    _temp: TempFolder | None = None
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def temp_folder(self) -> TempFolder:
        """Return the model's temporary folder, creating it once (thread-safe)."""
        with self._lock:
            if self._temp is None or not self._temp.alive:
                self._temp = TempFolder()
            return self._temp

    @property
    def temp_path(self) -> str | None:
        """The temporary folder's path, or ``None`` if there is none."""
        temp = self._temp
        return None if temp is None or not temp.alive else temp.path

    def remove_temp(self) -> None:
        """Delete the temporary folder now."""
        with self._lock:
            if self._temp is not None:
                self._temp.remove()
                self._temp = None

    def remember(self, cache: dict[Any, Any], key: Any, value: Any) -> Any:
        """Store ``value`` in one of the caches (bounded) and return it."""
        if len(cache) > _CACHE_ENTRIES:
            cache.clear()
        cache[key] = value
        return value

    def unpack_loader(
        self, X: Any, y: Any, kwargs: Mapping[str, Any]
    ) -> tuple[Any, Any, dict[str, Any]]:
        """Take ``X``, ``y`` and further arguments out of an :class:`ArrayLoader` given as ``X``."""
        if not isinstance(X, ArrayLoader):
            return X, y, dict(kwargs)
        if y is not None:
            raise ValueError("When `X` is an ArrayLoader, `y` must be None (the loader holds it).")
        arrays = dict(X.dataset.arrays)
        if self.param_input not in arrays:
            raise ValueError(
                f"The ArrayLoader has no field {self.param_input!r} (`param_input`); "
                f"its fields are {sorted(arrays)}."
            )
        X_arr = arrays.pop(self.param_input)
        y_arr = arrays.pop(self.param_output, None)
        both = sorted(set(arrays) & set(kwargs))
        if both:
            raise ValueError(
                f"{both} are both fields of the ArrayLoader passed as `X` and keyword "
                "arguments of the call, which would replace the loader's values; pass each "
                "once: drop the keyword argument(s), or build the loader without the field(s)."
            )
        return X_arr, y_arr, {**arrays, **kwargs}

    def bind(self, X: Any, y: Any, kwargs: Mapping[str, Any], config: ExecutionConfig) -> BoundArgs:
        """Bind a call's inputs to the kernel's arguments (every call starts here).

        Also points JAX's persistent compilation cache at the settings'
        ``compilation_cache_dir`` before anything compiles.

        Args:
            X: The input.
            y: The observed output, or ``None``.
            kwargs: Further kernel arguments.
            config: The call's execution settings.
        """
        use_compilation_cache(config.compilation_cache_dir)
        X, y, kwargs = self.unpack_loader(X, y, kwargs)
        check_reserved_kwargs(kwargs, self.kernel, self.param_input, self.param_output)
        return bind_args(
            self.param_input, X, self.param_output, y, kwargs, config.input_window_bytes
        )

    def probe(self, bound: BoundArgs) -> dict[str, dict[str, Any]]:
        """Describe every site of the kernel on the call's first two rows (abstractly).

        Raises:
            InputError: If the kernel fails because of an input it names.
        """
        small = {k: read_rows(v, 0, 2) for k, v in bound.rows.items()}
        try:
            return probe_sites(self.kernel, {**bound.shared, **small}, bound.static)
        except Exception as err:
            self.reraise(err, bound)
            raise

    def reraise(self, err: Exception, bound: BoundArgs) -> None:
        """Raise an :class:`~dopax.exceptions.InputError` naming the input to blame for ``err``.

        Returns (and the caller re-raises ``err``) when no input is to blame.

        Args:
            err: What the kernel raised on the call's inputs.
            bound: The call's inputs.
        """
        better = explain(err, bound.rows, bound.shared, bound.n_rows, self.fitted_inputs)
        if better is not err:
            raise better from err

    def ensure_spec(self, bound: BoundArgs, *, fitting: bool) -> KernelSpec:
        """Return the kernel's spec, tracing it first when needed.

        A fitting call also records its arguments' schema (:attr:`inputs`),
        traces the kernel with its output observed and, when that branch
        runs, without it (the branch predictions take), and the spec holds
        the sites of both, merged with what earlier traces saw.

        Args:
            bound: The call's bound inputs.
            fitting: Whether the call fits (the output must then be observed).
        """
        if fitting:
            self.inputs = input_schema(bound, self.param_input, self.param_output)
        if self.spec is not None and (not fitting or self.spec.output_observed):
            return self.spec
        traced = self.probe(bound)
        validate_trace(traced, self.kernel, self.param_output, fitting=fitting)
        spec = build_spec(traced, self.param_output)
        if fitting:
            sampling = self._sampling_branch(bound)
            if sampling is not None:
                spec = merge_specs(spec, sampling)
        self.spec = spec if self.spec is None else merge_specs(spec, self.spec)
        return self.spec

    def _sampling_branch(self, bound: BoundArgs) -> KernelSpec | None:
        """Return the spec of the kernel run without its output, or ``None`` if that fails."""
        rows = {k: v for k, v in bound.rows.items() if k != self.param_output}
        static = tuple(sorted({**dict(bound.static), self.param_output: None}.items()))
        unobserved = BoundArgs(bound.n_rows, rows, dict(bound.shared), static)
        try:
            traced = self.probe(unobserved)
            validate_trace(traced, self.kernel, self.param_output, fitting=False)
        except Exception:  # the fit's own trace is what fitting needs
            return None
        return build_spec(traced, self.param_output)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "param_input": self.param_input,
            "param_output": self.param_output,
            "spec": self.spec,
            "inputs": self.inputs,
            "fitted_inputs": self.fitted_inputs,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]
