"""The library pipeline: what ``marginkit run``, ``margins``, ``consistency`` and ``bounds`` do, callable
from Python. Specs are frozen data (:mod:`.specs`); the runner loads model and data, computes the
per-sample table resumably and records provenance (:mod:`.run`, :mod:`.table`); the estimator dispatch
(:mod:`.estimate`) is the one place where an estimator name becomes code; analyses are assembled for
the report writers of :mod:`marginkit.report` (:mod:`.consistency`, :mod:`.bounds`); training runs
(:mod:`.train`).
"""

from .bounds import BoundsJob, BoundsRun, run_bounds
from .bracket import SubsetBracket, certify_subset
from .consistency import (
    ConsistencyOptions,
    ConsistencyRun,
    SubsetEstimate,
    consistency_from_job,
    consistency_from_table,
    eps_grid,
    subset_estimate,
)
from .estimate import EstimatorUnavailable, input_margin_columns, verify_function
from .reproduce import STUDIES, ReproductionRun, Study, StudyResult, load_reproduction, run_reproduction
from .run import Prepared, check_output_folder, job_settings, prepare, run_margins
from .specs import DataRef, MarginJob, ModelRef, load_data_ref, load_model_ref
from .table import INPUT_MARGIN_MODES, margin_table
from .train import TrackedTraining, TrainJob, track_margins, train_checkpoint

__all__ = [
    "BoundsJob",
    "BoundsRun",
    "SubsetBracket",
    "certify_subset",
    "ConsistencyOptions",
    "ConsistencyRun",
    "DataRef",
    "EstimatorUnavailable",
    "INPUT_MARGIN_MODES",
    "MarginJob",
    "ModelRef",
    "Prepared",
    "SubsetEstimate",
    "TrackedTraining",
    "TrainJob",
    "check_output_folder",
    "consistency_from_job",
    "consistency_from_table",
    "eps_grid",
    "input_margin_columns",
    "job_settings",
    "load_data_ref",
    "load_model_ref",
    "margin_table",
    "prepare",
    "run_bounds",
    "run_margins",
    "subset_estimate",
    "track_margins",
    "train_checkpoint",
    "verify_function",
    "STUDIES",
    "ReproductionRun",
    "Study",
    "StudyResult",
    "load_reproduction",
    "run_reproduction",
]

from .bounds import PresetModel, preset_trainer, run_bounds_preset  # noqa: E402

__all__ += ["PresetModel", "preset_trainer", "run_bounds_preset"]
