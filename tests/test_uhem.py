"""UHEM (Eq. 4-8) and the mapping modules."""

import pytest
import torch

from recbole_histllm.model.modules import UHEM, MappingModule

DIM, L = 16, 5


def history_batch(lengths, n=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    bsz = len(lengths)
    desc = torch.randn(bsz, n, L, DIM, generator=gen)
    desc_mask = torch.rand(bsz, n, L, generator=gen) > 0.3
    desc_mask[..., 0] = True
    item_mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    images = torch.randn(bsz, n, DIM, generator=gen)
    return desc, desc_mask, images, item_mask


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_one_token_per_sample_for_any_history_length(encoder):
    uhem = UHEM(DIM, encoder).eval()
    lengths = [0, 1, 5, 20]
    out = uhem(*history_batch(lengths))
    assert out.shape == (len(lengths), DIM)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_row_output_ignores_other_rows_and_padding(encoder):
    torch.manual_seed(0)
    uhem = UHEM(DIM, encoder).eval()
    desc, desc_mask, images, item_mask = history_batch([3, 20, 0, 7])
    together = uhem(desc, desc_mask, images, item_mask)
    for row in range(4):
        alone = uhem(desc[row : row + 1], desc_mask[row : row + 1], images[row : row + 1], item_mask[row : row + 1])
        assert torch.allclose(alone, together[row : row + 1], atol=1e-5)
    # garbage in padded item slots changes nothing
    noisy = desc.clone()
    noisy[~item_mask] = 1e3
    assert torch.allclose(uhem(noisy, desc_mask, images, item_mask), together, atol=1e-5)


def test_assemble_concatenates_description_then_image_per_item():
    desc = torch.arange(6, dtype=torch.float32).reshape(1, 2, 3, 1).repeat(1, 1, 1, 2)
    desc_mask = torch.tensor([[[True, True, False], [True, False, False]]])
    images = torch.tensor([[[100.0, 100.0], [200.0, 200.0]]])
    seq, lengths = UHEM.assemble(desc, desc_mask, images, torch.tensor([[True, True]]))
    assert lengths.tolist() == [5]  # 2 desc + image, 1 desc + image
    assert seq[0, :, 0].tolist() == [0.0, 1.0, 100.0, 3.0, 200.0]


def test_history_order_matters_for_gru():
    uhem = UHEM(DIM, "gru").eval()
    desc, desc_mask, images, item_mask = history_batch([5])
    flipped = desc.clone()
    flipped[0, :5] = desc[0, :5].flip(0)
    flipped_mask = desc_mask.clone()
    flipped_mask[0, :5] = desc_mask[0, :5].flip(0)
    flipped_images = images.clone()
    flipped_images[0, :5] = images[0, :5].flip(0)
    assert not torch.allclose(uhem(desc, desc_mask, images, item_mask),
                              uhem(flipped, flipped_mask, flipped_images, item_mask))


def test_mapping_module_shapes():
    assert MappingModule(384, 64)(torch.randn(3, 384)).shape == (3, 64)
    assert MappingModule(256, 64, k=2)(torch.randn(3, 5, 256)).shape == (3, 5, 2, 64)
    assert MappingModule(8, 4, layers=1)(torch.randn(2, 8)).shape == (2, 4)
