"""The coordinator's side of vertical scoring (logistic regression across agencies); FedAvg lives in ``flower/``."""
