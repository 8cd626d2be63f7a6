"""The coordinator's side of scoring: vertical logistic regression and horizontal FedAvg."""
