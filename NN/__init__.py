"""Neural experts, mixture of experts, training."""
