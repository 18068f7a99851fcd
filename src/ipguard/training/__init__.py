"""Training: the recipe and seeded resumable loop, and the content-keyed model cache."""
