"""What pretraining and fine-tuning share, written once: config parts (`config`), optimizers
and schedule (`optim`), the DeepSpeed config and safe checkpoint loading (`deepspeed`),
precision, device and GPU peaks (`device`), dropout seeds (`seeds`), Ray start-up and the
worker environment (`runtime`), and where starting weights come from (`sources`)."""
