"""The questions the generative paths ask by default (`report`, the archive job, the demo, the
server's page), in a module without torch so that the command line can show them in --help."""

DEFAULT_QUESTION = "Please describe this ECG."   # ECG-Chat's report request
