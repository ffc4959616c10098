"""fedaaa.client (see fedaaa/__init__.py)."""

from fedaaa import require_namespace

require_namespace(__name__)
