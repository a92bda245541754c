"""Ray Data jobs over whole archives: the only place Ray Data is wired to models.

- ``embed``: archive -> read + preprocess (CPU tasks) -> EncoderUDF actors -> Parquet shards
  committed exactly once per block into the workspace (``workspace``), then the FAISS index.
- ``classify``: labels from the stored embeddings (probes or zero-shot; no re-encoding).
- ``report``: archive -> read tasks -> vLLM engine actors -> report shards (``report_prompts``:
  the --rag / --ddp prompt stage; ``report_html``: the static pages).

What they share, from below: ``read_stage`` (the read + preprocess task and its columns),
``ray_common`` (the Ray session, the actor restart policy, Ray Data's logging), ``sources``,
``blocks``, ``workspace`` and ``table_model`` (a table's model and weights folder).
``queries`` is no Ray job: the query vectors and the search over a workspace's index behind
`ecgbatch search` (and `eval zeroshot --query`).

Submodules import Ray, torch and faiss lazily, inside the functions that need them.
"""
