"""The coordinator: blocks, compares and clusters encodings, and releases only DP aggregates."""
