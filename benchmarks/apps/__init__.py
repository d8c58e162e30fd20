"""The servers the benchmark compares against ``mfk serve``: one module each."""
