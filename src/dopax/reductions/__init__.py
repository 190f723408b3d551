"""Statistics over draws inside compiled programs: order statistics, summaries, PSIS-LOO.

Pure JAX functions with the draws on one axis, run by the block programs of
``summarize``, ``loo`` and ``compare_scenarios`` (:mod:`dopax.answers`,
:mod:`dopax.effects`) where the draws are made.
"""
