"""The offline evaluation's train subsample (eval.train_fraction): class-balanced, seeded, drawn
from labels read without the images, named in the protocol text; bad values refused up front."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from sslx.data import pipeline, sources
from sslx.evaluate import offline
from tests.train.helpers import smoke_config


def test_train_fraction_is_a_class_balanced_seeded_subsample_named_in_the_protocol(
    fashion_mnist_dir):
  config = smoke_config(fashion_mnist_dir, **{"eval.train_fraction": 0.1})  # of the first 2000
  info = sources.get_dataset_info("fashion_mnist")
  kwargs = sources.source_kwargs(config.data)
  train, test = offline.eval_sources(config, info, kwargs)

  full = sources.load_source("fashion_mnist", "train", **kwargs)
  labels = np.asarray([e["label"] for e in pipeline.read_examples(full, range(2000))])
  np.testing.assert_array_equal(
      sources.split_labels("fashion_mnist", "train", limit=2000, **kwargs), labels)
  kept = train.indices
  assert kept.max() < 2000 and len(np.unique(kept)) == len(kept) == len(train)
  np.testing.assert_array_equal(np.bincount(labels[kept], minlength=10),
                                np.round(np.bincount(labels, minlength=10) * 0.1))
  assert [e["label"] for e in pipeline.read_examples(train, range(len(train)))] == list(
      labels[kept])
  assert len(test) == 400  # the test split is never subsampled

  again, _ = offline.eval_sources(config, info, kwargs)
  np.testing.assert_array_equal(again.indices, kept)  # the seed fixes the subsample
  with config.unlocked():
    config.seed = 1
  assert not np.array_equal(offline.eval_sources(config, info, kwargs)[0].indices, kept)

  protocol = offline.describe_protocols(config)
  assert ("bank = class-balanced 10% of the first 2000 of the train split (seed 1), queries = "
          "test split (first 400)") in protocol["knn"]
  assert "holdout of the class-balanced 10% of the first 2000 of the train split (seed 1)" in (
      protocol["linear"])
  with config.unlocked():
    config.eval.train_examples = 0
  assert "bank = class-balanced 10% of the train split (seed 1)," in (
      offline.describe_protocols(config)["knn"])

  with config.unlocked():
    config.eval.train_examples, config.eval.train_fraction = 2000, 0.001
  with pytest.raises(ValueError, match=r"eval.train_fraction=0.001: .*keeps no example"):
    offline.eval_sources(config, info, kwargs)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_out_of_range_train_fraction_is_refused_naming_the_field(fraction):
  config = smoke_config("never-read", **{"eval.train_fraction": fraction})
  mesh = Mesh(np.array(jax.devices()), ("data",))
  with pytest.raises(ValueError, match=r"eval.train_fraction must be a number in \(0, 1\] "
                                       r"\(1: the whole train split\), got "):
    offline.check_config(config, mesh)
  with config.unlocked():
    config.eval.train_fraction = 1.0
  offline.check_config(config, mesh)  # 1: the whole split


def test_imagenet_presets_evaluate_a_tenth_of_the_train_split():
  from configs import common, simclr
  assert common.base_config().eval.train_fraction == 1.0
  assert simclr.get_config("imagenet").eval.train_fraction == 0.1
  assert "class-balanced 10% of the train split (seed 0)" in offline.describe_protocols(
      simclr.get_config("imagenet"))["knn"]
  assert simclr.get_config("imagenet,smoke").eval.train_fraction == 1.0
