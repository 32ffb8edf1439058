"""HistLLM's modules, one file each: VMA (Eq. 2-3), CIA (Eq. 9-12), their shared mapping MLP, and UHEM
(Eq. 4-8)."""

from recbole_histllm.model.modules.cia import CIA
from recbole_histllm.model.modules.mapping import (
    MappingModule,
    TokenScale,
    TokenStats,
    token_embedding_rms,
    token_embedding_stats,
)
from recbole_histllm.model.modules.uhem import UHEM
from recbole_histllm.model.modules.vma import VMA

__all__ = [
    "CIA", "UHEM", "VMA", "MappingModule", "TokenScale", "TokenStats", "token_embedding_rms", "token_embedding_stats",
]
