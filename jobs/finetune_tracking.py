"""MLflow runs of the fine-tune and evaluate jobs: tagged runs, a search's child runs.

`JobRun` is `jobs.tracking.Tracker` (find-or-create by run name, every call an attempt that
warns instead of failing the job, models logged pickle-free and registered) for jobs that
record tags (the pretrained model's URI and run, the task) and a config rather than a
pretraining dataset. `child` opens a trial's run under a search's parent run
(`mlflow.parentRunId`), carrying the same tags plus the trial's hyperparameters.
Never trains and never reads data.
"""
from __future__ import annotations

import json

from jobs.tracking import Tracker, client, get_or_create_run, local_artifact_root

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "bertpipe.trial"


class JobRun(Tracker):
    def __init__(self, tracking_uri: str, experiment: str, run_name: str, tags: dict):
        super().__init__(tracking_uri, experiment, run_name)
        self.tags = dict(tags)

    def open(self, params: dict, config_yaml: str | None = None,
             config_name: str = "config.yaml") -> str | None:
        """Find or create the run, tag it, log params (and the config): its id, or None
        when MLflow cannot be reached (the job goes on untracked)."""
        c = self._attempt("connect", client, self.tracking_uri)
        got = c and self._attempt("create or find the run", get_or_create_run, c,
                                  self.experiment, self.run_name, self.tags,
                                  local_artifact_root(self.tracking_uri))
        if not got:
            return None
        self.run_id, created = got
        self.resumed = not created
        self._attempt("tag the run", self._set_tags, c)
        self._attempt("log params", self._log_params, c, params)
        if config_yaml is not None:
            self._attempt("log the config", c.log_text, self.run_id, config_yaml,
                          f"config/{config_name}")
        return self.run_id

    def _set_tags(self, c) -> None:
        for k, v in self.tags.items():
            c.set_tag(self.run_id, k, str(v))

    def child(self, name: str, params: dict) -> JobRun:
        """A trial's run under this one (untracked when this one is)."""
        run = JobRun(self.tracking_uri, self.experiment, name,
                     {**self.tags, PARENT_TAG: self.run_id or "", TRIAL_TAG: json.dumps(params)})
        if self.run_id is not None:
            run.open(params)
        return run

    def set_tag(self, key: str, value: str) -> None:
        if self.run_id is None:
            return
        c = self._attempt("connect", client, self.tracking_uri)
        if c is not None:
            self._attempt(f"set tag {key}", c.set_tag, self.run_id, key, value)

    def log_artifact(self, path: str, folder: str) -> None:
        if self.run_id is None:
            return
        c = self._attempt("connect", client, self.tracking_uri)
        if c is not None:
            self._attempt(f"log {path}", c.log_artifact, self.run_id, path, folder)
