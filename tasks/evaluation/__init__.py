"""Evaluation: pure metrics, Video-MME loading and scoring, the vision probe, checkpoint evaluators, reports.

- ``metrics``: VQA normalization and accuracy, temporal span parsing and scores, multiple-choice letters;
- ``videomme``: the benchmark's public JSON, prompt and per-duration / per-task scorer;
- ``probes``: nearest-prototype classification with the ViT's pooled features;
- ``answering``: a checkpoint loaded for greedy answering;
- ``run``: ``evaluate_vqa`` / ``evaluate_temporal`` / ``evaluate_videomme`` / ``evaluate_probe`` and
  ``evaluate_checkpoint`` (with ``EvalConfig``);
- ``report``: metrics into lineage (``record_eval_metrics``) and ``comparison_table`` markdown.
Import from the submodules; this package imports nothing at load time.
"""
