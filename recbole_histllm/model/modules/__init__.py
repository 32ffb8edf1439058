"""HistLLM's modules, one file each: mapping modules (VMA, CIA) and UHEM."""

from recbole_histllm.model.modules.mapping import MappingModule, TokenScale, token_embedding_rms
from recbole_histllm.model.modules.uhem import UHEM

__all__ = ["UHEM", "MappingModule", "TokenScale", "token_embedding_rms"]
