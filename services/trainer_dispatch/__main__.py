"""`python -m services.trainer_dispatch`: run the trainer-dispatch service (same as `pdmfed service trainer-dispatch`)."""

import sys

from federation.runtime.launch import service_main

if __name__ == "__main__":
    sys.exit(service_main("trainer-dispatch"))
