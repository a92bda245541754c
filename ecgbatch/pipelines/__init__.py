"""Ray Data jobs over whole archives: the only place Ray Data is wired to models.

- ``embed``: archive -> read + preprocess (CPU tasks) -> EncoderUDF actors -> Parquet shards
  committed exactly once per block into the workspace (``workspace``), then the FAISS index.
- ``search``: text / example-ECG retrieval over a workspace's index.
- ``classify``: zero-shot labels from the stored embeddings (no re-encoding).

Submodules import Ray, torch and faiss lazily, inside the functions that need them.
"""
