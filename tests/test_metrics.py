import pytest
import torch
import torch.nn.functional as F

from tinyldm.data import Scenes
from tinyldm.metrics import Judge, attribute_accuracy, frechet_distance, fsd
from tinyldm.pretrained import COURSE_JUDGE, course_judge


def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    # a shift changes only the means: the distance is |shift|^2
    shift = torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0, 0.0])
    assert frechet_distance(x, x + shift) == pytest.approx(shift.pow(2).sum().item(), rel=1e-6)
    # one dimension: (mu_a - mu_b)^2 + (s_a - s_b)^2 with the sample statistics
    a, b = torch.randn(400, 1, generator=g), 3 * torch.randn(400, 1, generator=g) + 1
    expected = (a.mean() - b.mean()).pow(2) + (a.std() - b.std()).pow(2)
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-5)


def test_frechet_distance_bad_input():
    with pytest.raises(ValueError, match=r"same d, got \[5, 3\] and \[5, 4\]"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


class FixedReader:
    """A judge stand-in whose readings are fixed in advance, so the expected accuracies are known independently."""

    def __init__(self, shape, color, size):
        self.readings = {"shape": torch.tensor(shape), "color": torch.tensor(color), "size": torch.tensor(size)}

    def predict(self, images):
        assert len(images) == len(self.readings["shape"])
        return self.readings


def test_attribute_accuracy_counts_by_hand_with_dont_care():
    reader = FixedReader(shape=[0, 1, 2, 3], color=[0, 1, 2, 3], size=[0, 0, 1, 1])
    images = torch.zeros(4, 3, 64, 64)
    # item 0 all right; item 1 wrong colour; item 2 wrong shape; item 3 wrong size, which counts only where given
    want = torch.tensor([[0, 0, 0], [1, 5, -1], [3, 2, -1], [3, 3, 0]])
    got = attribute_accuracy(reader, images, want)
    assert got == {"shape": 0.75, "color": 0.75, "size": 0.5, "all": 0.25}
    no_size = want.clone()
    no_size[:, 2] = -1  # size never asked for: not scored, and not part of "all"
    assert attribute_accuracy(reader, images, no_size) == {"shape": 0.75, "color": 0.75, "all": 0.5}


def test_judge_takes_other_sizes_and_refuses_bad_shapes():
    judge = Judge()
    assert judge.features(torch.zeros(2, 3, 32, 32)).shape == (2, 128)
    with pytest.raises(ValueError, match=r"expected images \[b, 3, H, W\], got shape \[2, 4, 64, 64\]"):
        judge.features(torch.zeros(2, 4, 64, 64))


@pytest.mark.skipif(not COURSE_JUDGE.exists(), reason="the course judge is made by `tinyldm train-judge`")
def test_course_judge_reads_scenes_and_fsd_separates_real_from_corrupted():
    judge = course_judge()
    held = Scenes(size=64, length=400, seed=7, max_objects=1)
    items = [held[i] for i in range(400)]
    images = torch.stack([it["image"] for it in items])
    acc = attribute_accuracy(judge, images, torch.stack([it["attributes"][0] for it in items]))
    assert acc["all"] > 0.95, acc
    real_a, real_b = images[:200], images[200:]
    blurred = F.avg_pool2d(F.pad(real_b, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    noisy = (real_b + 0.3 * torch.randn(real_b.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    grey = real_b.mean(1, keepdim=True).expand_as(real_b)
    same = fsd(judge, real_a, real_b)
    # the judge is trained on lightly blurred and noisy scenes (to read imperfect samples), so blur moves its
    # features little (seen: real-real 9.2, noisy 12.8, blurred 17.8, grey 264); each still lands beyond the
    # distance between two real sets of the same size
    distances = {name: fsd(judge, real_a, c) for name, c in [("blurred", blurred), ("noisy", noisy), ("grey", grey)]}
    assert all(d > 1.25 * same for d in distances.values()), (same, distances)
    assert distances["grey"] > 10 * same, (same, distances)


def test_class_attributes_are_shape_colour_and_any_size():
    from tinyldm.data import label_of
    from tinyldm.metrics import class_attributes

    got = class_attributes([label_of("circle", "red"), label_of("star", "blue"), label_of("triangle", "yellow")])
    assert got.tolist() == [[0, 0, -1], [3, 4, -1], [2, 2, -1]]
    with pytest.raises(ValueError, match=r"expected class labels \[b\] in 0..23"):
        class_attributes([24])
