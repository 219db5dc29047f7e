"""pdm-federation: secure federated learning for predictive maintenance."""
