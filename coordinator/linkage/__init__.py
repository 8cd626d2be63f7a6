"""The coordinator's linkage: blocking, similarity, matching, threshold choice, the match round, its state."""
