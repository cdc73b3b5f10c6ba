"""Settings shared by every method's config: run length, logging, mesh, data, evaluation."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = ""  # module experiments/<experiment>.py
  c.seed = 0
  c.batch_size = 256  # global, over all devices and processes
  c.total_steps = 1000
  c.log_every = 50
  c.checkpoint_every = 500
  c.max_checkpoints = 3
  c.progress_bar = True

  c.data = ml_collections.ConfigDict()
  c.data.name = "fashion_mnist"
  c.data.data_dir = ""  # prepared TFDS datasets; default $SSLX_DATA_DIR or ~/tensorflow_datasets
  c.data.source_dir = ""  # raw files to prepare from (Fashion-MNIST idx files)
  c.data.allow_download = True  # only used when no local copy of the raw files is found
  c.data.worker_count = 0  # grain worker processes decoding on the host

  c.mesh = ml_collections.ConfigDict()
  c.mesh.num_devices = -1  # -1: every device of every process
  c.mesh.shape = (-1,)
  c.mesh.axes = ("data",)  # add "fsdp" / "model" axes for sharded parameters
  # How parameters with logical axis names (ViT) are sharded: a preset of
  # sslx.sharding.RULE_PRESETS (replicated | fsdp | tensor | fsdp_tensor), or custom_rules,
  # ((logical_name, mesh_axis), ...), which override the preset when not empty.
  c.mesh.rules = "replicated"
  c.mesh.custom_rules = ()

  # Multi-process start-up: explicit (coordinator_address, num_processes, process_id), or
  # auto_detect=True to let jax.distributed find SLURM / Open MPI / TPU pod settings.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  c.distributed.auto_detect = False
  c.distributed.timeout_s = 300

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "lars"  # lars | sgd | adamw
  c.optim.lr = 0.3  # peak learning rate per 256 examples, scaled by optim.lr_scaling
  c.optim.lr_scaling = "linear"  # linear | sqrt | none
  c.optim.weight_decay = 1e-6
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.trust_coefficient = 0.001
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.warmup_steps = 100
  c.optim.end_lr_fraction = 0.0
  c.optim.grad_clip_norm = 0.0

  c.eval = ml_collections.ConfigDict()
  c.eval.enabled = True
  c.eval.batch_size = 1000
  c.eval.knn_k = 20  # DINO's main setting; InstDisc used k=200
  c.eval.knn_temperature = 0.07
  c.eval.linear_probe = True
  c.eval.baselines = ("random_encoder", "raw_pixels")
  c.eval.train_examples = 0  # 0: the whole split; smaller for quick runs
  c.eval.test_examples = 0
  return c


def parse_arg(arg: str | None) -> dict:
  """'smoke,width=16' -> {'smoke': True, 'width': '16'}."""
  out = {}
  for part in (arg or "").split(","):
    if part:
      key, _, value = part.partition("=")
      out[key.strip()] = value.strip() if value else True
  return out
