"""Running Flower: environment, warm starts, and an in-process grid for tests and the demo."""
