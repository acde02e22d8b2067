"""Engines, as peers: ``local`` (torch + transformers; the embedded default and single-GPU runs) and
``trl`` (TRL's GRPOTrainer with the registry's loss; multi-GPU through accelerate). Each is a module
with ``train(spec, store, ...)`` that reports through ``harness.lifecycle.RunRecord``; neither imports
the other, and ``harness.train.run`` picks one by ``engine.name``."""
