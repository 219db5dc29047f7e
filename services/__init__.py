"""The four pdm-federation services: connector, trainer-dispatch, security, aggregator."""
