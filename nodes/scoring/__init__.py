"""The agency's side of scoring: its data, vertical steps, horizontal updates, the Flower round handlers."""
