"""SimCLRv2's third stage (Chen et al. 2020b, Sec. 2, eq. 2-3): the fine-tuned network of stage
2 (`experiments/simclrv2_finetune.py`) is the teacher, frozen; a student classifier, trained from
scratch, learns the teacher's softmax on the unlabelled images (`sslx.losses.
knowledge_distillation`, temperature loss.temperature = 1), both seeing the same weak view:

    L = (1 - a) CE(student(x_labelled), y) + a KD(student(x), teacher(x)),   a = loss.distill_weight

a = 1 (the default) is distillation alone, the paper's setting when labels are few. The student
is config.model: the teacher's network (self-distillation, simclrv2.teacher_model = model) or a
smaller one. The teacher runs with its BatchNorm's running statistics.

The run starts from `simclrv2.teacher`, the fine-tuning run's workdir (`Method.warm_start`, read
at the first start; the teacher is then part of this run's checkpoints, so a resumed run or
`python -m sslx.evaluate` needs only this workdir). That run must have finished, on this run's
dataset, labelled split (seed, labels per class) and unlabelled set, with simclrv2.teacher_model
and this config's projector.
"""

import jax
import jax.numpy as jnp
import ml_collections

from experiments import _semisup
from experiments.simclrv2_finetune import FineTunedClassifier, check_same_fields, loaded_like
from sslx import experiment
from sslx.data import augment
from sslx.losses import knowledge_distillation
from sslx.method import Method
from sslx.train import loop, runs


def teacher_network(config) -> experiment.Network:
  """The teacher's Network: FineTunedClassifier on simclrv2.teacher_model and config.projector."""
  teacher_config = ml_collections.ConfigDict(config.to_dict())
  teacher_config.model = config.simclrv2.teacher_model
  return _semisup.classifier(teacher_config, FineTunedClassifier)[0]


def _check_teacher_run(config, saved) -> None:
  workdir = config.simclrv2.teacher
  if saved.experiment != "simclrv2_finetune":
    raise ValueError(f"simclrv2.teacher={workdir!r} is a {saved.experiment!r} run; expected a "
                     "'simclrv2_finetune' run (configs/simclrv2.py:finetune)")
  check_same_fields("simclrv2.teacher", workdir, saved.model.to_dict(),
                    config.simclrv2.teacher_model.to_dict(), "simclrv2.teacher_model")
  check_same_fields("simclrv2.teacher", workdir, saved.projector.to_dict(),
                    config.projector.to_dict(), "projector")
  # The teacher saw the labels of this split (its seed and count) and the same unlabelled set:
  # the student's row is then that of this many labels, whether or not it sees them itself.
  fields = ("data.name", "seed", "semi.labels_per_class", "semi.unlabelled")
  saved_fields, fields_here = (runs.flatten(c.to_dict()) for c in (saved, config))
  check_same_fields("simclrv2.teacher", workdir, {f: saved_fields.get(f) for f in fields},
                    {f: fields_here.get(f) for f in fields}, "")


def get_method(config) -> Method:
  _semisup.check_config(config)
  experiment.check_positive("loss.temperature", config.loss.temperature)
  if not 0.0 < config.loss.distill_weight <= 1.0:
    raise ValueError(f"loss.distill_weight must be in (0, 1] (1: distillation alone), got "
                     f"{config.loss.distill_weight!r}")
  if not config.simclrv2.teacher:
    raise ValueError("simclrv2.teacher must be the workdir of the fine-tuning run (stage 2: "
                     "configs/simclrv2.py:finetune), got ''")
  network, spec = _semisup.classifier(config)
  teacher = teacher_network(config)
  weight = config.loss.distill_weight

  def loss(params, variables, batch, rng):
    view_key, model_key = jax.random.split(rng)
    unlabelled = augment.augment_batch(view_key, batch["unlabelled_image"], config.semi.weak)
    images = unlabelled
    if weight < 1:  # the labelled images in the same pass (BatchNorm sees all of them)
      labelled = augment.augment_batch(jax.random.fold_in(view_key, 1), batch["image"],
                                       config.semi.weak)
      images = jnp.concatenate([labelled, unlabelled])
    x = spec.normalize(images)
    student = network.merge(params, variables["batch_stats"])
    _, logits = student(x, train=True, rng=model_key)
    frozen = teacher.merge(variables["teacher"]["params"], variables["teacher"]["batch_stats"])
    teacher_logits = jax.lax.stop_gradient(frozen(x, train=False)[1])
    u = slice(images.shape[0] - unlabelled.shape[0], None)
    kd = knowledge_distillation(logits[u], teacher_logits[u],
                                temperature=config.loss.temperature)
    total = weight * kd
    metrics = {"train/kd_loss": kd,
               "train/teacher_agreement": jnp.mean(jnp.argmax(logits[u], -1)
                                                   == jnp.argmax(teacher_logits[u], -1)),
               "train/teacher_confidence": jnp.mean(jnp.max(
                   jax.nn.softmax(teacher_logits[u]), axis=-1))}
    if weight < 1:
      labelled_logits = logits[:batch["image"].shape[0]]
      sup_loss = _semisup.cross_entropy(labelled_logits, batch["label"])
      total = total + (1.0 - weight) * sup_loss
      metrics["train/sup_loss"] = sup_loss
    state = {"batch_stats": experiment.Network.batch_stats(student), "ema": variables["ema"],
             "teacher": variables["teacher"]}
    return total, {"metrics": metrics, "state": state}

  def warm_start(variables, mesh):
    workdir = config.simclrv2.teacher
    saved = runs.load_config(workdir, "simclrv2.teacher")
    _check_teacher_run(config, saved)
    state = loop.restore_finished_run(workdir, mesh, name="simclrv2.teacher", config=saved)
    evaluated = state.model_state["ema"]  # the teacher's evaluated model (its EMA)
    return {**variables, "teacher": loaded_like(f"simclrv2.teacher={workdir!r}: its model",
                                                variables["teacher"], evaluated)}

  return _semisup.ema_classifier_method(
      config, network, spec, loss, init_state=lambda: {"teacher": teacher.init(
          jax.random.PRNGKey(0))}, warm_start=warm_start)
