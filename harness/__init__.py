"""peft-compat: save -> load -> forward compatibility checks for PEFT adapters on tiny random-init models."""
import os

# Nothing is ever fetched from a model hub: force offline before huggingface_hub reads its settings.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from .case import Case, CaseError, load_case_file, load_cases  # noqa: E402
from .roundtrip import cell_id, run_cell  # noqa: E402

__all__ = ["Case", "CaseError", "load_case_file", "load_cases", "run_cell", "cell_id"]
__version__ = "0.1.0"
