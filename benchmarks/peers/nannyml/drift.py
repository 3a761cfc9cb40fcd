"""NannyML's data drift detectors on windows, run under the nannyml peer's virtualenv.

    python drift.py JOBS.json OUT.json

JOBS names the reference Parquet file (Refit's reference features: predicted label, confidence,
entropy, the embedding axes and the text descriptors), which columns are categorical, the
detectors to run and the window files (Parquet, the windows of one cell one after another, each
``window`` rows). NannyML's thresholds come from the reference cut into chunks of the window's
size; each is set to alert above mean + 1.645 standard deviations of those chunks, the one-sided
5% point (NannyML's default is 3 standard deviations both ways):

    nannyml-univariate    UnivariateDriftCalculator on every column (Kolmogorov-Smirnov for
                          continuous columns, chi-squared for categorical ones); a window drifts
                          when any column alerts, which is how NannyML reports it
    nannyml-multivariate  DataReconstructionDriftCalculator (PCA reconstruction error) on every
                          column

OUT gets, per detector and window file, each window's drift decision and seconds.
"""

import json
import sys
import time
import warnings

import nannyml as nml
import pandas as pd
from nannyml.thresholds import StandardDeviationThreshold

THRESHOLD = StandardDeviationThreshold(std_lower_multiplier=None, std_upper_multiplier=1.645)


def build(name: str, columns: list[str], categorical: list[str], window: int):
    """The calculator ``name``, chunking by ``window`` rows (not yet fitted)."""
    if name == "nannyml-univariate":
        return nml.UnivariateDriftCalculator(
            column_names=columns,
            treat_as_categorical=categorical,
            continuous_methods=["kolmogorov_smirnov"],
            categorical_methods=["chi2"],
            chunk_size=window,
            thresholds={"kolmogorov_smirnov": THRESHOLD, "chi2": THRESHOLD},
        )
    if name == "nannyml-multivariate":
        # Categorical columns are told apart by their dtype (strings), as NannyML does.
        return nml.DataReconstructionDriftCalculator(
            column_names=columns,
            chunk_size=window,
            threshold=THRESHOLD,
        )
    raise SystemExit(f"unknown detector {name!r}")


def alerts(result) -> list[bool]:
    """Per analysis chunk, in order: whether any alert column is set."""
    frame = result.filter(period="analysis").to_df()
    flags = frame[[c for c in frame.columns if c[-1] == "alert"]]
    return [bool(v) for v in flags.any(axis=1)]


def main() -> None:
    with open(sys.argv[1]) as file:
        jobs = json.load(file)
    reference = pd.read_parquet(jobs["reference"])
    categorical = jobs["categorical"]
    columns = list(reference.columns)
    results: dict = {}
    with warnings.catch_warnings():  # few reference chunks at large windows: NannyML warns, and runs
        warnings.simplefilter("ignore")
        for name in jobs["detectors"]:
            for path, window in jobs["windows"].items():
                calculator = build(name, columns, categorical, int(window)).fit(reference)
                frame = pd.read_parquet(path)
                decisions, seconds = [], []
                for start in range(0, len(frame), int(window)):
                    began = time.perf_counter()
                    chunk = frame.iloc[start : start + int(window)].reset_index(drop=True)
                    decisions += alerts(calculator.calculate(chunk))
                    seconds.append(time.perf_counter() - began)
                results.setdefault(name, {})[path] = {"drift": decisions, "seconds": seconds}
    with open(sys.argv[2], "w") as file:
        json.dump(results, file)


if __name__ == "__main__":
    main()
