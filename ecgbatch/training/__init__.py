"""Training jobs (Ray Train). ECG-CoCa contrastive (+ caption) pretraining:

- ``texts``: text builders per source (LUDB free text, Challenge SNOMED codes, PTB-XL SCP
  statements, MIMIC machine reports, CSV/JSONL tables) + ECG-Chat's measurement suffix (WDE)
- ``pairs``: (ECG, text) pairs from a manifest or folder, preprocessed and measured once (npz cache)
- ``data``: patient-level splits, balanced seeded epoch orders, worker slices, text variants
- ``augment``: seeded on-the-fly ECG augmentation
- ``job_config``: the job YAML (configs/*.yaml) as dataclasses
- ``coca_task``: the step module (what DistributedDataParallel wraps), freezing, optimizer groups
- ``coca_job``: ``train_loop_per_worker`` + ``run_job`` (TorchTrainer launch, resume)
- ``checkpointing``: per-epoch checkpoints (model folder + optimizer state), trained-only folders
- ``validation``: retrieval / zero-shot / text-query metrics on held-out pairs
- ``instruct`` (+ ``instruct_questions``, ``instruct_format``): ECG-Instruct data (ECG-Chat's
  format) built from labelled records; read/check/write ECG-Instruct JSON and JSON Lines

Command line: ``ecgbatch train coca --config configs/coca-mini.yaml [--workers N] [--resume]``.
Nothing heavy is imported here.
"""
