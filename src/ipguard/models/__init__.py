"""The owner's model and everything that loads one: the owner wrapper, model specs, weights,
architectures, Hugging Face folders."""
