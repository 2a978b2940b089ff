"""Fine-tune a pretrained LLM (SmolLM2-135M) on a user's own text: on one device, or across many.

- :func:`finetune` — one device, one user, a method checked against the device's memory budget;
- :func:`run_federated` — FedIT LoRA averaging, MeZO with seed exchange, or per-device portions of the adapters;
- :func:`generate` — deterministic completions, to see what fine-tuning changed.
"""

from pocketlearn.apps.llm.data import UserData, find_user, largest_users, tokenize_user, user_name
from pocketlearn.apps.llm.federated import FederatedLLMConfig, FederatedReport, federated_users, run_federated
from pocketlearn.apps.llm.finetune import FinetuneConfig, FinetuneReport, finetune, perplexity
from pocketlearn.apps.llm.generate import SamplingConfig, generate
from pocketlearn.apps.llm.methods import CHOICES, check_memory, get_choice

__all__ = [
    "CHOICES", "FederatedLLMConfig", "FederatedReport", "FinetuneConfig", "FinetuneReport", "SamplingConfig",
    "UserData", "check_memory", "federated_users", "find_user", "finetune", "generate", "get_choice",
    "largest_users", "perplexity", "run_federated", "tokenize_user", "user_name",
]
