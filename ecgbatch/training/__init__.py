"""Training jobs (Ray Train). ECG-CoCa contrastive (+ caption) pretraining:

- ``texts``: text builders per source (LUDB free text, Challenge SNOMED codes, PTB-XL SCP
  statements, MIMIC machine reports, CSV/JSONL tables) + ECG-Chat's measurement suffix (WDE);
  labels read from those texts: ``ecgbatch.text.labels``
- ``pairs``: (ECG, text) pairs from a manifest or folder, preprocessed and measured once (npz cache)
- ``data``: patient-level splits, balanced seeded epoch orders, worker slices, text variants
- ``augment``: seeded on-the-fly ECG augmentation
- ``job_config``: the job YAML (configs/*.yaml) as dataclasses
- ``loop``: the one Ray Train loop every job runs (setup, ``precision``, resume, step,
  validate, checkpoint, report; ``plan_run`` + ``launch`` on the driver); a job supplies a task
- ``coca_task``: the step module (what DistributedDataParallel wraps), freezing, optimizer groups
- ``coca_job``: ``CocaTrainTask`` + ``run_job``; ``llava_job``: ``LlavaTrainTask`` + ``run_job``
- ``checkpointing``: per-epoch checkpoints (model folder + optimizer state), trained-only folders
- ``validation``: retrieval / zero-shot / text-query metrics on held-out pairs
- ``crossval``: pooled held-out scores of k-fold runs; ``probe_eval``: nested cross-validation
  of the linear probes (``ecgbatch eval crossval|classify``)
- ``instruct`` (+ ``instruct_questions``, ``instruct_format``): ECG-Instruct data (ECG-Chat's
  format) built from labelled records; read/check/write ECG-Instruct JSON and JSON Lines

Command line: ``ecgbatch train coca --config configs/coca-mini.yaml [--workers N] [--resume]``.
Nothing heavy is imported here.
"""
