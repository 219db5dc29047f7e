"""`python -m services.security`: run the security service (same as `pdmfed service security`)."""

import sys

from federation.runtime.launch import service_main

if __name__ == "__main__":
    sys.exit(service_main("security"))
