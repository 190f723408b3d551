"""Load the NSW experimental sample of Dehejia and Wahba (1999) for the LaLonde examples.

The data come from the ``causaldata`` package (table ``nsw_mixtape``, used in
Cunningham, *Causal Inference: The Mixtape*, chapter "Matching and
Subclassification"), which ships the file with the package, so no network access
is needed. It is the experimental sample of the National Supported Work
Demonstration as restricted by Dehejia and Wahba: 445 men, 185 randomly assigned to
the job-training programme and 260 to control.

Sources:
    LaLonde, R. (1986). "Evaluating the Econometric Evaluations of Training Programs
    with Experimental Data." American Economic Review 76(4), 604-620.

    Dehejia, R. and Wahba, S. (1999). "Causal Effects in Nonexperimental Studies:
    Reevaluating the Evaluation of Training Programs." Journal of the American
    Statistical Association 94(448), 1053-1062.

Columns (all float64):
    treat: 1 if assigned to the programme, else 0.
    age: Age in years.
    educ: Years of schooling.
    black, hisp, marr, nodegree: 0/1 indicators (Black, Hispanic, married, no high
        school degree).
    re74, re75, re78: Real earnings in 1974, 1975 and 1978 (US dollars); ``re78`` is
        the outcome.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["COLUMNS", "N_CONTROL", "N_TREATED", "load_lalonde"]

COLUMNS: tuple[str, ...] = (
    "treat",
    "age",
    "educ",
    "black",
    "hisp",
    "marr",
    "nodegree",
    "re74",
    "re75",
    "re78",
)
N_TREATED = 185
N_CONTROL = 260


def load_lalonde() -> pd.DataFrame:
    """Return the Dehejia-Wahba NSW experimental sample as a float64 DataFrame.

    The constant ``data_id`` column of the source table (its value is
    ``"Dehejia-Wahba Sample"``) is dropped; every other column is cast to float64 and
    the index is a fresh ``RangeIndex``.

    Returns:
        A DataFrame of 445 rows with the columns in :data:`COLUMNS`.

    Raises:
        ImportError: If ``causaldata`` is not installed (``pip install causaldata``).
        RuntimeError: If the shipped table is not the expected 185 treated and 260
            control rows.
    """
    from causaldata import nsw_mixtape

    raw = nsw_mixtape.load_pandas().data
    frame = raw.loc[:, list(COLUMNS)].astype("float64").reset_index(drop=True)
    n_treated = int((frame["treat"] == 1.0).sum())
    n_control = int((frame["treat"] == 0.0).sum())
    if (n_treated, n_control) != (N_TREATED, N_CONTROL) or len(frame) != N_TREATED + N_CONTROL:
        raise RuntimeError(
            "Unexpected NSW sample from causaldata: "
            f"{n_treated} treated and {n_control} control rows of {len(frame)}."
        )
    return frame


if __name__ == "__main__":
    data = load_lalonde()
    means = data.groupby("treat")["re78"].mean()
    print(data.describe().T)
    print(f"Experimental difference in mean 1978 earnings: {means[1.0] - means[0.0]:.2f} USD")
