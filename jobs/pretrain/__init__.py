"""BERT pretraining: config (`config`), driver (`driver`: checks, MLflow run, Ray Train fit),
the worker's training loop (`loop`), checkpoints and trainer state (`checkpoint`), metric
windows (`metrics`), and the model a run trains (`model`). `python -m jobs.pretrain` is
`bertpipe pretrain`."""
