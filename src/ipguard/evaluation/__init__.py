"""Evaluation: suites of pirated and independent models, sweeps, metrics, plots and the demo."""
