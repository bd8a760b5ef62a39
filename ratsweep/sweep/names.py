"""What ratsweep names things in MLflow, one definition each: the tags of a sweep's experiment, of
its run and of its trials' runs, and the prefix of the outcome it logs on its run. Filter a store with
them, e.g. tags.`ratsweep.sweep` = 'NAME' and tags.`ratsweep.smoke` = 'false'.
"""

# A report's MLflow step: the first of these metrics it holds (the experiment's own clock), else Tune's count.
STEP_KEYS = ("step", "epoch", "updates")

# ---- the MLflow experiment (one per sweep name) --------------------------------------------------
EXPERIMENT_TYPE = "ratsweep.experiment"  # the registered experiment it runs (approx, cifar10, ...)
EXPERIMENT_METRIC, EXPERIMENT_MODE = "ratsweep.metric", "ratsweep.mode"
EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3: GenAI or model training (its UI's default tab)
SHARED_VIEW = "mlflow.sharedViewState."  # + a key: a runs table's state the UI opens by ?viewStateShareKey=KEY

# ---- every run: the sweep's and its trials' ----------------------------------------------------
KIND = "ratsweep.kind"  # "sweep" or "trial"
SWEEP, SWEEP_ID, SMOKE = "ratsweep.sweep", "ratsweep.sweep_id", "ratsweep.smoke"  # name, NAME-STAMP, "true"/"false"
VERSION = "ratsweep.version"
PROVIDER = "ratsweep.provider."  # + a distribution (a plugin): its version; + ".commit": its git commit
GIT_COMMIT = "git.commit"  # of the driver's working directory
RUN_NAME, NOTE, PARENT = "mlflow.runName", "mlflow.note.content", "mlflow.parentRunId"

# ---- the sweep's run ---------------------------------------------------------------------------
SPACE = "ratsweep.space"  # the search-space file
REPORT = "ratsweep.report"  # its report layout (JSON)
BEST_TRIAL, BEST_RUN = "ratsweep.best_trial", "ratsweep.best_run"
BEST = "best."  # + the metric (a metric), + a searched key (a param): the sweep's outcome

# ---- a trial's run -----------------------------------------------------------------------------
TRIAL = "ratsweep.trial_id"  # Tune's trial id: how a retried or resumed trial finds its run again
SEARCHED = "ratsweep.searched"  # the keys searched (comma-separated)
FAILURE, RETRIES = "ratsweep.failure", "ratsweep.retries"
CONFIG_FROM_STEP = "ratsweep.config_from_step_"  # + a step: the config PBT changed to there (JSON)
DEVICE, NODE, KERNEL_BACKEND, CUDA, CUPY = "device", "ray.node_id", "kernel_backend", "cuda", "cupy"
