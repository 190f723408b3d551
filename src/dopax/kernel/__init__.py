"""Kernel signature binding, tracing into :class:`KernelSpec`, and validation."""
