"""The forward sampler, the random-number scheme, planning and argument binding."""
