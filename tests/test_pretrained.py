"""The course checkpoints in data/: they load (paired with the networks they were trained with), they sample what
they should, and the whole default course path makes no network attempt."""
import pytest
import torch

from tinyldm.autoencoder import reconstruction_psnr
from tinyldm.conditioning import LabelCondition, TextCondition
from tinyldm.data import NUM_CLASSES, Faces, class_name
from tinyldm.metrics import attribute_accuracy, class_attributes, fsd
from tinyldm.pipeline import generate
from tinyldm.pretrained import (COURSE_AUTOENCODER, COURSE_CLASS_UNET, COURSE_FACE_AUTOENCODER, COURSE_FACE_JUDGE,
                                COURSE_FACE_UNET, COURSE_JUDGE, COURSE_RETRIEVAL_UNET, COURSE_TEXT_ENCODER,
                                COURSE_TEXT_UNET, COURSE_UNET, course_autoencoder, course_class_unet,
                                course_face_autoencoder, course_face_judge, course_face_unet, course_judge,
                                course_retrieval_unet, course_text_encoder, course_text_unet, course_unet)
from tinyldm.recipes import course_database, face_test, course_scenes, retrieval_queries
from tinyldm.retrieval import RetrievalCondition, SceneImageEncoder
from tinyldm.sample import DDIM
from tinyldm.text import CLIPTextEncoder, TextEncoderNotFound

from network_guard import no_network

SHIPPED = [COURSE_AUTOENCODER, COURSE_JUDGE, COURSE_TEXT_ENCODER, COURSE_UNET, COURSE_CLASS_UNET, COURSE_TEXT_UNET,
           COURSE_RETRIEVAL_UNET]
pytestmark = pytest.mark.skipif(not all(p.exists() for p in SHIPPED),
                                reason="the course checkpoints are made by the commands in data/README.md")


@pytest.fixture(scope="module")
def course():
    """Every shipped checkpoint, loaded the way the notebooks load them, under the network guard."""
    with no_network():
        ae, judge, text = course_autoencoder(), course_judge(), course_text_encoder()
        image = SceneImageEncoder(text)
        models = {"ae": ae, "judge": judge, "text": text, "unet": course_unet(ae), "class": course_class_unet(ae),
                  "text_unet": course_text_unet(ae, text), "image": image,
                  "retrieval": course_retrieval_unet(ae, image), "database": course_database(image, n=2000,
                                                                                             progress=False)}
    return models


def test_the_class_model_draws_the_asked_colour_and_mostly_the_shape(course):
    labels = torch.arange(NUM_CLASSES)  # one sample of each class
    condition = LabelCondition(NUM_CLASSES)
    with no_network():
        images = generate(course["class"], course["ae"], condition.given(labels), condition.null(NUM_CLASSES), s=3.0)
    acc = attribute_accuracy(course["judge"], images, class_attributes(labels))
    # the shipped model gets the colour right almost always and shape and colour together in about nine of ten
    # samples (docs/experiments.md); chance is 1/24 for both, 1/6 for the colour. 24 samples: a wide margin
    assert acc["color"] >= 0.8 and acc["all"] >= 0.6, acc


def test_the_text_model_follows_the_prompts_colour(course):
    prompts = [f"a {class_name(c)}" for c in range(NUM_CLASSES)]
    condition = TextCondition(course["text"])
    with no_network():
        images = generate(course["text_unet"], course["ae"], condition.given(prompts), condition.null(NUM_CLASSES),
                          s=3.0)
    acc = attribute_accuracy(course["judge"], images, class_attributes(torch.arange(NUM_CLASSES)))
    assert acc["color"] >= 0.8 and acc["all"] >= 0.5, acc


def test_the_retrieval_model_follows_its_neighbours_and_a_swapped_database(course):
    db, image, model = course["database"], course["image"], course["retrieval"]
    condition = RetrievalCondition(db.dim, model.info["k"])
    labels = torch.arange(NUM_CLASSES)
    with no_network():
        images = generate(model, course["ae"], condition.given(retrieval_queries(image, db, labels, condition.k)),
                          condition.null(NUM_CLASSES), s=3.0)
    acc = attribute_accuracy(course["judge"], images, class_attributes(labels))
    assert acc["color"] >= 0.8 and acc["all"] >= 0.6, acc
    # the same queries against a database of red scenes only: the samples turn red
    scenes = course_scenes(len(db), seed=2)
    red = db.subset(torch.tensor([scenes.objects(int(i))[0][0].color == "red" for i in db.ids]))
    queries = image.embed(torch.stack([course_scenes(NUM_CLASSES, seed=4)[i]["image"] for i in range(NUM_CLASSES)]))
    with no_network():
        images = generate(model, course["ae"], condition.given(red.query(queries, condition.k)),
                          condition.null(NUM_CLASSES), s=3.0)
    assert (course["judge"].predict(images)["color"] == 0).float().mean() >= 0.8  # colour 0 is red


def test_the_unconditional_model_makes_scenes_not_noise(course):
    with no_network():
        images = generate(course["unet"], course["ae"], n=64, sampler=DDIM(course["unet"].schedule, steps=20))
    scenes = course_scenes(64, seed=1)  # the kind of scene it learned, not seen in training
    real = torch.stack([scenes[i]["image"] for i in range(64)])
    noise = torch.rand(64, 3, 64, 64) * 2 - 1
    judge = course["judge"]
    assert images.shape == (64, 3, 64, 64) and images.min() >= -1 and images.max() <= 1
    assert fsd(judge, real, images) < 0.2 * fsd(judge, real, noise)
    # not collapsed onto one shape: the judge reads at least three of the four (the data has a quarter each; the
    # shipped model's mix is further from it, see docs/experiments.md)
    shares = torch.bincount(judge.predict(images)["shape"], minlength=4) / 64
    assert (shares > 0).sum() >= 3 and shares.max() <= 0.75, shares


def test_the_clip_path_says_what_to_download_without_reaching_the_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine has
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    with no_network() as attempts:
        with pytest.raises(TextEncoderNotFound, match="never downloads"):
            CLIPTextEncoder.from_pretrained()
    assert attempts == []


FACE_FILES = [COURSE_FACE_AUTOENCODER, COURSE_FACE_JUDGE, COURSE_FACE_UNET]


@pytest.mark.skipif(not all(p.exists() for p in FACE_FILES), reason="made by the commands in data/README.md")
def test_the_face_models_reconstruct_judge_and_draw_faces():
    with no_network():
        ae, judge = course_face_autoencoder(), course_face_judge()
        unet = course_face_unet(ae)
    held = Faces(size=64, length=64, seed=1)
    x = torch.stack([held[i]["image"] for i in range(64)])
    # the face autoencoder reconstructs faces far better than the scenes' one does
    assert reconstruction_psnr(ae, x) > reconstruction_psnr(course_autoencoder(), x) + 5
    truth = torch.stack([held[i]["attributes"] for i in range(64)])
    assert attribute_accuracy(judge, x, truth)["all"] >= 0.5  # nine attributes at once, chance far below 1%
    # guided samples have the asked hair colour (chance 1/5; the shipped model: 83% of 30 samples); the mouth, a few
    # pixels wide, it does not yet draw reliably (docs/experiments.md)
    result = face_test(unet, ae, judge, n=30, seed=1)
    assert result["class"]["hair_color"] >= 0.6, result
