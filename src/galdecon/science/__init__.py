"""Science around a run: simulated data, metrics against the truth, baselines, figures."""
