"""The PyTorch side of benchmarks/throughput.py: the same SSL train steps built from timm /
torchvision models and lightly's heads and losses, timed the same way (source images/s).

    .venv-lightly/bin/python benchmarks/torch_throughput.py --method=simclr --arch=resnet50 \
        --batch_size=256 --dtype=bfloat16 --name=gpu          # needs benchmarks/setup_lightly.sh
    .venv-lightly/bin/python benchmarks/torch_throughput.py --method=moco_v3 --arch=vit_tiny \
        --image_size=32 --batch_size=8 --steps=1 --rounds=1 --warmup=1 --no-compile --name=cpu_check

Each step is what a PyTorch user would write with these libraries on one GPU: bf16 autocast
(`--dtype=bfloat16`; float32 otherwise, with TF32 matmuls on as XLA's default is), the model and
loss under `torch.compile` (`--no-compile` for a quick CPU check), channels_last for ResNets,
fused AdamW for ViTs and lightly's LARS for ResNets, and EMA teachers updated with foreach ops.
The views are synthetic uint8 tensors made once on the device, as throughput.py's batches; unlike
sslx's step, this step does no augmentation (the views are taken as already augmented), so it
does slightly less work. Methods and their shapes follow sslx's imagenet presets:

* simclr: 2 views, ResNet (torchvision) + SimCLRProjectionHead(2048, 2048, 128), NTXentLoss(0.1);
* moco_v3: 2 views, ViT (timm) + EMA teacher, MoCoProjectionHead(768, 4096, 256, 3 layers, BN),
  BYOLPredictionHead(256, 4096, 256), symmetric NTXentLoss(0.2) between student and teacher;
* dino: 2 global (224) + `--local_crops` local (96) views, ViT + EMA teacher on the globals,
  DINOProjectionHead(384, 2048, 256, 65536), DINOLoss;
* mae: one view, 75% of the patches masked, MaskedVisionTransformerTIMM + MAEDecoderTIMM
  (512 wide, 8 blocks, 16 heads), MSE on per-patch normalised pixels.

`--count_flops` counts the step's FLOPs once with torch.utils.flop_counter (uncompiled) and
reports MFU against `--peak_flops` (default: an H100 SXM's dense bf16 989e12). Appends one row
per run to benchmarks/results/throughput_torch_<name>.json with the machine and the command.
"""

import argparse
import copy
import json
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("simclr", "moco_v3", "dino", "mae")
TIMM_ARCHS = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
              "vit_base": "vit_base_patch16_224", "vit_large": "vit_large_patch16_224"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--method", choices=METHODS, required=True)
  p.add_argument("--arch", default="", help="torchvision resnet name (resnet18, resnet50) or "
                 f"{list(TIMM_ARCHS)}; default: the method's imagenet preset")
  p.add_argument("--batch_size", type=int, default=256, help="source images per step")
  p.add_argument("--image_size", type=int, default=224, help="global view size")
  p.add_argument("--local_size", type=int, default=96, help="DINO local view size")
  p.add_argument("--local_crops", type=int, default=8, help="DINO local views")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
  p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--steps", type=int, default=10, help="timed steps per round")
  p.add_argument("--rounds", type=int, default=3, help="timed rounds; the fastest is reported")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation included)")
  p.add_argument("--count_flops", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--peak_flops", type=float, default=989e12,
                 help="peak FLOP/s for MFU (H100 SXM dense bf16; TF32 is half)")
  p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
  p.add_argument("--name", default="gpu", help="results: throughput_torch_<name>.json")
  p.add_argument("--out_dir", default=os.path.join(HERE, "results"))
  args = p.parse_args(argv)
  for field in ("batch_size", "image_size", "steps", "rounds", "warmup"):
    if getattr(args, field) < 1:
      raise SystemExit(f"--{field} must be >= 1, got {getattr(args, field)}")
  args.arch = args.arch or {"simclr": "resnet50", "moco_v3": "vit_base", "dino": "vit_small",
                            "mae": "vit_base"}[args.method]
  return args


def backbone(arch: str, image_size: int, dynamic_size: bool = False) -> tuple[nn.Module, int]:
  """(model returning pooled features, feature width)."""
  if arch.startswith("resnet"):
    import torchvision
    model = getattr(torchvision.models, arch)()
    width = model.fc.in_features
    model.fc = nn.Identity()
    return model, width
  if arch not in TIMM_ARCHS:
    raise SystemExit(f"--arch must be a torchvision resnet or one of {list(TIMM_ARCHS)}, got "
                     f"{arch!r}")
  import timm
  model = timm.create_model(TIMM_ARCHS[arch], pretrained=False, num_classes=0,
                            img_size=image_size, dynamic_img_size=dynamic_size)
  return model, model.embed_dim


def to_input(views: torch.Tensor) -> torch.Tensor:
  """uint8 [B, C, H, W] -> normalised float, as sslx's step starts from uint8 images."""
  mean = views.new_tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
  std = views.new_tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
  return (views.float() / 255 - mean) / std


def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
  with torch.no_grad():
    t = [p for p in teacher.parameters()]
    s = [p for p in student.parameters()]
    torch._foreach_lerp_(t, s, 1 - momentum)


class SimCLR(nn.Module):
  def __init__(self, args):
    super().__init__()
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    self.backbone, width = backbone(args.arch, args.image_size)
    self.head = SimCLRProjectionHead(width, 2048, 128)
    self.criterion = NTXentLoss(temperature=0.1)

  def forward(self, views):
    z = self.head(self.backbone(to_input(torch.cat(views))))
    z1, z2 = z.float().chunk(2)
    return self.criterion(z1, z2)


class MoCoV3(nn.Module):
  def __init__(self, args):
    super().__init__()
    from lightly.loss import NTXentLoss
    from lightly.models.modules import BYOLPredictionHead, MoCoProjectionHead
    from lightly.models.utils import deactivate_requires_grad
    self.backbone, width = backbone(args.arch, args.image_size)
    self.projector = MoCoProjectionHead(width, 4096, 256, num_layers=3, batch_norm=True)
    self.predictor = BYOLPredictionHead(256, 4096, 256)
    self.teacher_backbone = copy.deepcopy(self.backbone)
    self.teacher_projector = copy.deepcopy(self.projector)
    deactivate_requires_grad(self.teacher_backbone)
    deactivate_requires_grad(self.teacher_projector)
    self.criterion = NTXentLoss(temperature=0.2)

  def forward(self, views):
    x = to_input(torch.cat(views))
    q1, q2 = self.predictor(self.projector(self.backbone(x))).float().chunk(2)
    with torch.no_grad():
      k1, k2 = self.teacher_projector(self.teacher_backbone(x)).float().chunk(2)
    return self.criterion(q1, k2) + self.criterion(q2, k1)

  def after_step(self):
    ema_update(self.teacher_backbone, self.backbone, 0.99)
    ema_update(self.teacher_projector, self.projector, 0.99)


class DINO(nn.Module):
  def __init__(self, args):
    super().__init__()
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad
    self.backbone, width = backbone(args.arch, args.image_size, dynamic_size=True)
    self.head = DINOProjectionHead(width, 2048, 256, 65536)
    self.teacher_backbone = copy.deepcopy(self.backbone)
    # The weight-normalised last layer cannot be deep-copied: a new head, loaded.
    self.teacher_head = DINOProjectionHead(width, 2048, 256, 65536)
    self.teacher_head.load_state_dict(self.head.state_dict())
    deactivate_requires_grad(self.teacher_backbone)
    deactivate_requires_grad(self.teacher_head)
    self.criterion = DINOLoss(output_dim=65536, warmup_teacher_temp_epochs=0)

  def forward(self, views):
    global_views, local_views = views[:2], views[2:]
    batch = global_views[0].shape[0]
    x_global = to_input(torch.cat(global_views))
    student = [self.head(self.backbone(x_global))]
    if local_views:  # one pass per resolution, as DINO's MultiCropWrapper
      student.append(self.head(self.backbone(to_input(torch.cat(local_views)))))
    student = torch.cat(student).float().split(batch)
    with torch.no_grad():
      teacher = self.teacher_head(self.teacher_backbone(x_global)).float().split(batch)
    return self.criterion(list(teacher), list(student), epoch=0)

  def after_step(self):
    ema_update(self.teacher_backbone, self.backbone, 0.996)
    ema_update(self.teacher_head, self.head, 0.996)


class MAE(nn.Module):
  def __init__(self, args):
    super().__init__()
    from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM
    vit, width = backbone(args.arch, args.image_size)
    self.patch_size = vit.patch_embed.patch_size[0]
    self.backbone = MaskedVisionTransformerTIMM(vit=vit)
    self.sequence_length = self.backbone.sequence_length
    self.decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches,
                                  patch_size=self.patch_size, embed_dim=width,
                                  decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)

  def forward(self, views):
    from lightly.models import utils
    images = to_input(views[0])
    batch = images.shape[0]
    idx_keep, idx_mask = utils.random_token_mask((batch, self.sequence_length), mask_ratio=0.75,
                                                 device=images.device)
    encoded = self.backbone.encode(images, idx_keep=idx_keep)
    tokens = utils.repeat_token(self.decoder.mask_token, (batch, self.sequence_length))
    tokens = utils.set_at_index(tokens, idx_keep, self.decoder.embed(encoded).type_as(tokens))
    pred = self.decoder.predict(utils.get_at_index(self.decoder.decode(tokens), idx_mask))
    target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - 1)
    # norm_pix_loss (He et al. 2022): each target patch normalised by its own mean and variance.
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    target = (target - mean) / (var + 1e-6).sqrt()
    return nn.functional.mse_loss(pred.float(), target)


MODELS = {"simclr": SimCLR, "moco_v3": MoCoV3, "dino": DINO, "mae": MAE}


def synthetic_views(args, device) -> list[torch.Tensor]:
  """uint8 views on the device: 2 (SimCLR, MoCo v3), 2 + local crops (DINO) or 1 (MAE)."""
  g = torch.Generator(device="cpu").manual_seed(0)
  sizes = {"simclr": [args.image_size] * 2, "moco_v3": [args.image_size] * 2,
           "mae": [args.image_size],
           "dino": [args.image_size] * 2 + [args.local_size] * args.local_crops}[args.method]
  views = [torch.randint(0, 256, (args.batch_size, 3, s, s), dtype=torch.uint8, generator=g)
           for s in sizes]
  memory_format = (torch.channels_last if args.arch.startswith("resnet")
                   else torch.contiguous_format)
  return [v.to(device).contiguous(memory_format=memory_format) for v in views]


def make_optimizer(args, model):
  params = [p for p in model.parameters() if p.requires_grad]
  if args.arch.startswith("resnet"):
    from lightly.utils.lars import LARS
    return LARS(params, lr=0.3 * args.batch_size / 256, momentum=0.9, weight_decay=1e-6)
  fused = args.device.startswith("cuda")
  return torch.optim.AdamW(params, lr=1.5e-4, weight_decay=0.1, fused=fused)


def count_flops(loss_fn, views) -> int:
  """FLOPs of one forward + backward pass (torch.utils.flop_counter: matmuls, convolutions,
  attention), counted on the uncompiled model."""
  from torch.utils.flop_counter import FlopCounterMode
  counter = FlopCounterMode(display=False)
  with counter:
    loss_fn(views).backward()
  return counter.get_total_flops()


def synchronize(device: str) -> None:
  if device.startswith("cuda"):
    torch.cuda.synchronize()


def run(args) -> dict:
  device = args.device
  torch.manual_seed(0)
  torch.backends.cuda.matmul.allow_tf32 = True  # XLA's default precision for float32 on GPU
  torch.backends.cudnn.allow_tf32 = True
  torch.backends.cudnn.benchmark = True
  model = MODELS[args.method](args).to(device)
  if args.arch.startswith("resnet"):
    model = model.to(memory_format=torch.channels_last)
  model.train()
  optimizer = make_optimizer(args, model)
  views = synthetic_views(args, device)
  autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                            enabled=args.dtype == "bfloat16")

  def loss_fn(views):
    with autocast:
      return model(views)

  flops = None
  if args.count_flops:
    flops = count_flops(loss_fn, views)
    optimizer.zero_grad(set_to_none=True)
  compiled_loss = torch.compile(loss_fn) if args.compile else loss_fn

  def step():
    loss = compiled_loss(views)
    loss.backward()
    loss = loss.detach()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if hasattr(model, "after_step"):
      model.after_step()
    return loss

  start = time.perf_counter()
  first_loss = step().item()  # compiles (with --compile)
  first_step_s = time.perf_counter() - start
  for _ in range(args.warmup - 1):
    step()
  synchronize(device)
  round_s = []
  for _ in range(args.rounds):
    start = time.perf_counter()
    for _ in range(args.steps):
      loss = step()
    synchronize(device)
    round_s.append(time.perf_counter() - start)
  last_loss = loss.item()
  seconds = min(round_s)
  steps_per_s = args.steps / seconds
  row = {"method": args.method, "arch": args.arch, "dtype": args.dtype, "compile": args.compile,
         "batch_size": args.batch_size, "image_size": args.image_size,
         "local_crops": args.local_crops if args.method == "dino" else 0,
         "first_step_s": first_step_s, "warmup_steps": args.warmup, "timed_steps": args.steps,
         "round_s": round_s, "timed_s": seconds, "step_s": seconds / args.steps,
         "images_per_s": args.batch_size * steps_per_s,
         "median_images_per_s": args.batch_size * args.steps / float(np.median(round_s)),
         "flops_per_step": flops, "peak_flops": args.peak_flops,
         "mfu": None if flops is None else flops * steps_per_s / args.peak_flops,
         "first_loss": first_loss, "last_loss": last_loss,
         "finite": bool(np.isfinite(first_loss) and np.isfinite(last_loss))}
  if device.startswith("cuda"):
    row["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
  return row


def machine(device: str) -> dict:
  out = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
         "python": platform.python_version(), "torch": torch.__version__, "device": device}
  for module in ("timm", "torchvision", "lightly"):
    try:
      out[module] = __import__(module).__version__
    except ImportError:
      out[module] = None
  if device.startswith("cuda"):
    out["device_kind"] = torch.cuda.get_device_name()
  return out


def main(argv=None):
  args = parse_args(argv)
  row = run(args)
  print(f"torch {row['method']:8s} {row['arch']:10s} {row['dtype']:8s} compile={int(args.compile)} "
        f"batch {row['batch_size']:5d}  first step {row['first_step_s']:7.1f} s  step "
        f"{row['step_s'] * 1e3:9.1f} ms  {row['images_per_s']:9.1f} img/s  "
        + ("" if row["mfu"] is None else f"{row['flops_per_step'] / row['batch_size'] / 1e9:7.2f}"
           f" GFLOP/img  MFU {100 * row['mfu']:5.1f}%  ")
        + f"loss {row['first_loss']:.4f} -> {row['last_loss']:.4f}", flush=True)
  path = os.path.join(args.out_dir, f"throughput_torch_{args.name}.json")
  result = {"name": args.name, "machine": machine(args.device), "runs": []}
  if os.path.exists(path):
    with open(path) as f:
      result = json.load(f)
  executable = os.path.relpath(sys.executable)  # .venv-lightly/bin/python from the repository
  if executable.startswith(".."):
    executable = sys.executable
  row["command"] = shlex.join([executable, *sys.argv])
  result["runs"].append(row)
  os.makedirs(args.out_dir, exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  print(f"appended to {path}")


if __name__ == "__main__":
  main()
