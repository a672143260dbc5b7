"""Benchmark harnesses behind ``rankiq bench serve`` and ``rankiq bench qa`` (the training
benches live in :mod:`rankiq.training.bench`). Nothing at run time imports this package: the
command registry names the handlers by string and imports them when a bench runs."""
