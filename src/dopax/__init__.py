"""dopax: scalable probabilistic impact modeling on NumPyro.

Fit any NumPyro kernel with SVI or MCMC, then stream posterior, prior and
predictive draws and pointwise log-likelihoods into chunked Zarr stores
(returned as lazy :class:`xarray.DataTree` objects), and estimate the effects
of interventions with their uncertainty.
"""

import logging

from dopax._version import __version__
from dopax.inference.trace import ZarrTrace
from dopax.kernel.spec import KernelSpec
from dopax.model.impact_model import ImpactModel
from dopax.output.cleanup import remove_incomplete
from dopax.output.store import open_result
from dopax.persist.saved import load_model, save_model

logging.getLogger("dopax").addHandler(logging.NullHandler())

__all__ = [
    "ImpactModel",
    "KernelSpec",
    "ZarrTrace",
    "load_model",
    "open_result",
    "remove_incomplete",
    "save_model",
    "__version__",
]
