"""`python -m services.aggregator`: run the aggregator service (same as `pdmfed service aggregator`)."""

import sys

from federation.runtime.launch import service_main

if __name__ == "__main__":
    sys.exit(service_main("aggregator"))
