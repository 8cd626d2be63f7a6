"""The agency's side of vertical scoring: its data, its steps, and the handlers the ClientApp calls."""
