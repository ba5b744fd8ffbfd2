"""Benchmarks users can run (`bertpipe bench NAME`), each printing a ratio against a
reference measured in the same run: `prepare` (pipeline vs bare tokenizers), `step` (our
step vs transformers, MFU on GPUs), `pretrain` (full job vs bare step, loader vs step)."""
