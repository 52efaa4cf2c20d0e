"""Evaluation and reporting: from computed predictions to numbers with confidence intervals,
tables, JSON and figures. Nothing here trains a model or knows about Lightning; evaluate.py runs
the models and hands their outputs over."""
