"""The CPPO paper's theory checked exactly on enumerable toy models (docs/theory.md)."""
