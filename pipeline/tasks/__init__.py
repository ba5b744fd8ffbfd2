"""Fine-tuning data: labelled files in (`readers`: JSONL, CSV/TSV, Parquet, SQuAD JSON,
CoNLL), model features out (`features`: pairs, words with BIO tags, multiple choice;
`squad`: SQuAD windows, answer spans, decoding). Pure Python / numpy / tokenizers: never
imports torch models, Ray or MLflow."""
