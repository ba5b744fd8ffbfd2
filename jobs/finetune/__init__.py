"""Fine-tuning: config and search grid (`config`), driver (`driver`), the worker's loop
(`loop`), parallel trials (`trials`), task specs and data (`tasks`), inference and scoring
(`predict`), and the metrics' standard definitions (`metrics`). `python -m jobs.finetune` is
`bertpipe finetune`."""
