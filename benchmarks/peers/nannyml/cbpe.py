"""NannyML's CBPE accuracy estimate, run under the nannyml peer's virtualenv.

    python cbpe.py JOBS.json OUT.json

JOBS names the reference Parquet file (``y_true``, ``y_pred`` and one probability column per
class), the class -> column map, and the analysis files, each with its chunk size: one chunk per
window. OUT gets, per analysis file, the estimated accuracy of each chunk in order. CBPE is fitted
once on the reference, as NannyML's documentation does for a monitored model.
"""

import json
import sys
import warnings

import nannyml as nml
import pandas as pd


def fitted(jobs: dict, chunk_size: int, reference: pd.DataFrame) -> nml.CBPE:
    """CBPE for accuracy on the reference, chunking by ``chunk_size`` rows."""
    estimator = nml.CBPE(
        y_pred_proba=jobs["classes"],
        y_pred="y_pred",
        y_true="y_true",
        metrics=["accuracy"],
        problem_type="classification_multiclass",
        chunk_size=chunk_size,
    )
    return estimator.fit(reference)


def main() -> None:
    with open(sys.argv[1]) as file:
        jobs = json.load(file)
    reference = pd.read_parquet(jobs["reference"])
    estimators: dict[int, nml.CBPE] = {}
    estimates = {}
    with warnings.catch_warnings():  # "too few chunks": the reference is one baseline, not a series
        warnings.simplefilter("ignore")
        for analysis in jobs["analyses"]:
            size = analysis["chunk_size"]
            estimator = estimators.setdefault(size, fitted(jobs, size, reference))
            frame = estimator.estimate(pd.read_parquet(analysis["file"])).filter(period="analysis").to_df()
            estimates[analysis["file"]] = [float(v) for v in frame[("accuracy", "value")]]
    with open(sys.argv[2], "w") as out:
        json.dump(estimates, out)


if __name__ == "__main__":
    main()
