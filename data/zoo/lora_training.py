"""The LoRA layer the zoo builders train (shared by `build_minilm.py` and `build_smollm2.py`)."""
import torch
from torch import nn

class LoRALinear(nn.Module):
    "A frozen `nn.Linear` plus a trainable low-rank update x·Aᵀ·Bᵀ·α/r (Hu et al. 2022), in PEFT's `lora_A`/`lora_B` layout."
    def __init__(self, lin: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.lin, self.scale = lin, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, lin.in_features)); nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)
        self.lora_B = nn.Parameter(torch.zeros(lin.out_features, r))
    def forward(self, x): return self.lin(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale
