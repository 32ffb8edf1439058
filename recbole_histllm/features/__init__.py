"""Item feature tools: KE descriptions (:mod:`.knowledge`), text embeddings (:mod:`.text`), image embeddings
(:mod:`.visual`, backbones in :mod:`.visual_backbones`) and their shared file helpers (:mod:`.files`)."""
