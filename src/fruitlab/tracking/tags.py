"""The MLflow tag names fruitlab writes and reads, in one place (runs, logged models, registered versions).

A tag is a contract between the code that writes it (fit, evaluate, promote) and the code that reads it (predict,
serve, compare, promote); defined here once, so that the two cannot drift apart.
"""

from __future__ import annotations

# On an MLflow experiment fruitlab creates: MLflow's own tag for the kind of work (model training, not GenAI).
# MLflow 3.17's UI reads it only where its GenAI/Model training switch is off; with the switch on (the default)
# the browser's stored choice picks the mode, which fruitlab's server page sets (tracking/ui_app.py).
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"

# On a fit run
NOTE = "mlflow.note.content"  # MLflow's run description (markdown): the recipe, split, data and headline metrics
PHASES = "fruitlab.phases"  # the fine-tuning phases as run: "head: epochs 1-3; top: epochs 4-6"
PHASE = "fruitlab.phase"  # the phase the run is in (while it trains) or ended in
VERSION = "fruitlab.version"  # the fruitlab that ran it
EXPERIMENT_FILE = "fruitlab.experiment_file"
BACKBONE = "fruitlab.backbone"
WEIGHTS = "fruitlab.weights"  # where the backbone's starting weights came from
DATASET = "fruitlab.dataset"
DATASET_FINGERPRINT = "fruitlab.dataset_fingerprint"  # also on registered versions: what the scores were measured on
CLASSES = "fruitlab.classes"
TASKS = "fruitlab.tasks"
CHECKPOINT_DIR = "fruitlab.checkpoint_dir"
BEST_CHECKPOINT = "fruitlab.best_checkpoint"
MODEL_URI = "fruitlab.model_uri"  # the model the run logged: models:/m-...
ROLE = "fruitlab.role"  # 'sweep' on a study's parent run
SPLIT = "fruitlab.split"  # the split scheme used (data.split, or the dataset's default when it is unset)
SPLIT_LEAK_FREE = "fruitlab.split.leak_free"  # true | false | unknown: do copies of a photo span train and val/test?
SPLIT_COPIES_ACROSS = "fruitlab.split.copies_across"  # val/test images with a copy in an earlier split (if known)
SPLIT_LEAK_SOURCE = "fruitlab.split.leak_source"  # how the leak status is known, or how to find it out

# On an evaluation run (and its source run)
RUN_KIND = "fruitlab.run_kind"  # 'evaluation'; fit runs carry no such tag
SOURCE_RUN = "fruitlab.source_run_id"  # the run that trained the evaluated model
EVALUATED_MODEL = "fruitlab.evaluated_model"  # the model reference as the user gave it
LOGGED_MODEL_ID = "fruitlab.logged_model_id"
LAST_EVALUATION = "fruitlab.last_evaluation_run_id"  # on the source run: its latest evaluation
TRAIN_COPIES = "fruitlab.evaluation.train_copies"  # evaluated images that copy a training image; 'unchecked'
IN_DISTRIBUTION = "fruitlab.evaluation.in_distribution"  # --shift: the model's own data the figures sit beside

# On a logged model
TEMPERATURE = "fruitlab.temperature"  # JSON {task: T}
TEMPERATURE_RUN = "fruitlab.temperature_run_id"  # the evaluation run that fitted it
TEMPERATURE_DATA = "fruitlab.temperature_data"  # what it was fitted on
CONVERTED_FROM = "fruitlab.converted_from"  # convert-model: the pickled model this one was made from

# On a registered version (promote)
METRIC = "fruitlab.metric"
CANDIDATE_SCORE = "fruitlab.candidate_score"
CHAMPION_SCORE = "fruitlab.champion_score"
CHAMPION_VERSION = "fruitlab.champion_version"
DECISION = "fruitlab.decision"
DECISION_REASON = "fruitlab.decision_reason"
