"""`python -m services.connector`: run the connector service (same as `pdmfed service connector`)."""

import sys

from federation.runtime.launch import service_main

if __name__ == "__main__":
    sys.exit(service_main("connector"))
