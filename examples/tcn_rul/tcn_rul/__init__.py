"""A small temporal convolutional RUL model, federated by pdm-federation as `tcn_rul.model:build`."""
