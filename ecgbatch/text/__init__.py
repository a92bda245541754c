"""What ECG report text says, read by one set of rules (standard library only, so that io,
signal, encoders, llava, serving, pipelines, eval and training can all import it without
importing upward).

- ``findings``: clinical findings in report text, negation- and hedge-aware (the matcher of
  the clinical-efficacy F1, the instruction-data builder and report checks).
- ``labels``: the keyword labels of training (balancing, splits, label loss, validation
  AUC), read by the same matcher so that "no atrial fibrillation" is no AF label.
"""
