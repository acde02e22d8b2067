"""Results → tables and figures. Reads run folders through harness.store only; never trains."""
