"""gradchain test suite."""
