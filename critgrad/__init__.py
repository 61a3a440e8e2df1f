"""critgrad: memory-augmented ("Critical Gradients") optimizers for PyTorch.

import critgrad
opt = critgrad.Adam(model.parameters(), lr=1e-3, topC=10, decay=0.7)   # torch.optim.Adam + memory
opt = critgrad.CriticalGradients(torch.optim.SGD(params, lr=0.1), topC=5)  # any torch optimizer
opt = critgrad.create_optimizer(model, "adamw_c", lr=1e-3, weight_decay=0.01)
opt = critgrad.Adam_CM(model.parameters(), lr=1e-3, topC=5)   # Adam with critical momenta
"""

from .adam_cm import Adam_CM
from .aggmo import AggMo
from .memory import AGGREGATIONS, KEY_MODES, SELECTIONS
from .optimizers import (
    SGD,
    SGD_C,
    Adagrad,
    Adam,
    Adam_C,
    Adamax,
    AdamW,
    AdamW_C,
    AggMo_C,
    NAdam,
    RAdam,
    RMSprop,
    RMSprop_C,
)
from .registry import create_optimizer, list_optimizers, optimizer_class, param_groups_weight_decay
from .wrapper import CriticalGradients

__version__ = "0.1.0"

__all__ = [
    "AGGREGATIONS",
    "KEY_MODES",
    "SELECTIONS",
    "SGD",
    "SGD_C",
    "Adagrad",
    "Adam",
    "AdamW",
    "AdamW_C",
    "Adam_C",
    "Adam_CM",
    "Adamax",
    "AggMo",
    "AggMo_C",
    "CriticalGradients",
    "NAdam",
    "RAdam",
    "RMSprop",
    "RMSprop_C",
    "create_optimizer",
    "list_optimizers",
    "optimizer_class",
    "param_groups_weight_decay",
]
