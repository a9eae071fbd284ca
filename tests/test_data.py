"""The built-in synthetic set and the images/ + masks/ folder layout."""
import numpy as np
import pytest
import torch
from PIL import Image

from unet_fast.workflow.data import (Augmented, FolderSegmentation, SYNTHETIC_CLASSES, SyntheticSegmentation,
                            split_indices, synthetic_sample)
from unet_fast.errors import InputError
from workflow_fixtures import make_folder_dataset, pytorch_path  # noqa: F401


def test_synthetic_set_is_a_function_of_its_seed():
    a = SyntheticSegmentation(6, (40, 48), seed=3)
    b = SyntheticSegmentation(6, (40, 48), seed=3)
    c = SyntheticSegmentation(6, (40, 48), seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)
    image, mask = a[0]
    assert image.shape == (3, 40, 48) and image.dtype == torch.uint8
    assert mask.shape == (40, 48) and int(mask.max()) < len(SYNTHETIC_CLASSES)
    assert a.class_names == list(SYNTHETIC_CLASSES)


def test_synthetic_set_has_every_class():
    masks = SyntheticSegmentation(32, (64, 64), seed=0).masks
    share = torch.bincount(masks.flatten(), minlength=4).double() / masks.numel()
    assert (share[1:] > 0.02).all() and share[0] > 0.5, share


def test_synthetic_sample_any_size():
    image, mask = synthetic_sample(0, 37, 101, index=5)
    assert image.shape == (37, 101, 3) and mask.shape == (37, 101)


@pytest.mark.parametrize("suffix,mode", [("", "L"), ("_mask", "P")])
def test_folder_dataset_pairs_by_stem(tmp_path, suffix, mode):
    root = make_folder_dataset(tmp_path / "d", count=4, size=(20, 28), num_classes=3,
                               mask_suffix=suffix, mask_mode=mode)
    ds = FolderSegmentation(str(root), num_classes=3, class_names=["bg", "a", "b"], progress=False)
    assert len(ds) == 4 and ds.class_names == ["bg", "a", "b"]
    image, mask = ds[1]
    assert image.shape == (3, 20, 28) and mask.shape == (20, 28)
    assert set(mask.unique().tolist()) == {0, 2}
    resized = FolderSegmentation(str(root), num_classes=3, size=(16, 16), progress=False)
    image, mask = resized[1]
    assert image.shape == (3, 16, 16) and set(mask.unique().tolist()) <= {0, 2}


def test_folder_mask_values_out_of_range_name_file_and_values(tmp_path):
    root = make_folder_dataset(tmp_path / "d", count=3, num_classes=3)
    Image.fromarray(np.full((24, 32), 255, np.uint8)).save(root / "masks" / "img_1_mask.png")
    with pytest.raises(InputError, match=r"img_1_mask\.png.*values found: 255"):
        FolderSegmentation(str(root), num_classes=3, progress=False)


def test_folder_missing_mask_and_size_mismatch(tmp_path):
    root = make_folder_dataset(tmp_path / "d", count=3)
    (root / "masks" / "img_2_mask.png").unlink()
    with pytest.raises(InputError, match=r"img_2\.png has no mask"):
        FolderSegmentation(str(root), num_classes=3, progress=False)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "img_2_mask.png")
    with pytest.raises(InputError, match=r"img_2\.png is 32x24 but its mask .*img_2_mask\.png is 10x10"):
        FolderSegmentation(str(root), num_classes=3, progress=False)


def test_split_is_seeded_and_disjoint():
    train, val = split_indices(50, 0.2, seed=1)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == list(range(50))
    assert split_indices(50, 0.2, seed=1) == (train, val)


def test_augmentation_depends_only_on_seed_epoch_and_index():
    ds = SyntheticSegmentation(4, (32, 32), seed=0)
    a = Augmented(ds, [0, 1, 2, 3], crop=(16, 16), flip=True, seed=7)
    b = Augmented(ds, [0, 1, 2, 3], crop=(16, 16), flip=True, seed=7)
    a.set_epoch(2)
    b.set_epoch(1)
    _ = [b[i] for i in range(4)]
    b.set_epoch(2)
    for i in (3, 0):  # any order
        assert all(torch.equal(x, y) for x, y in zip(a[i], b[i]))
    image, mask = a[0]
    assert image.shape == (3, 16, 16) and mask.shape == (16, 16)
