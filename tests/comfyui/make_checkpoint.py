"""Writes small random-weight models that a real ComfyUI loads as Stable Diffusion 1.5.

No checkpoint can be downloaded here, so the models are built from ComfyUI's own model classes
(imported from the ComfyUI folder given, never copied) and filled with random weights:

- diffusion_models/<name>.safetensors: an SD1.5 UNet of two 320-channel levels (about 37M
  parameters). ComfyUI recognises SD1.5 from 320 base channels, a 768-wide context, no linear
  projection and no extra conditioning, and reads the depth and block counts from the file.
- text_encoders/clip_l.safetensors: a full-size CLIP-L text encoder (its loader expects it).
- vae_approx/taesd_encoder.safetensors, taesd_decoder.safetensors: the small TAESD pair, which
  ComfyUI's VAE loader offers as "taesd".

Usage: python make_checkpoint.py COMFYUI_DIR MODELS_DIR [--seed N]
"""

import argparse
import math
import os
import sys

import torch


def fill_random(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Weights ~ N(0, 1/fan_in), embeddings ~ N(0, 0.02), norm scales 1, biases 0."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                std = 0.02 if "embedding" in name else 1.0 / math.sqrt(p[0].numel())
                p.copy_(torch.randn(p.shape, generator=generator) * std)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)


def tiny_sd15_unet(comfy_dir: str):
    sys.path.insert(0, comfy_dir)
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=320,
                     num_res_blocks=[1, 1], channel_mult=(1, 1), transformer_depth=[1, 1],
                     transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1],
                     context_dim=768, num_heads=8, num_head_channels=-1, use_spatial_transformer=True,
                     use_linear_in_transformer=False, legacy=False, adm_in_channels=None,
                     dtype=torch.float32, device="cpu", operations=comfy.ops.manual_cast)


def write_models(comfy_dir: str, models_dir: str, seed: int = 0, unet_name: str = "tiny_sd15") -> dict:
    sys.path.insert(0, comfy_dir)
    from safetensors.torch import save_file
    from comfy.cli_args import args
    args.cpu = True  # before comfy.model_management decides on a device
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd

    g = torch.Generator().manual_seed(seed)
    paths = {}
    for sub in ("diffusion_models", "text_encoders", "vae_approx"):
        os.makedirs(os.path.join(models_dir, sub), exist_ok=True)

    unet = tiny_sd15_unet(comfy_dir)
    fill_random(unet, g)
    sd = {k: v.contiguous() for k, v in unet.state_dict().items()}
    paths["unet"] = os.path.join(models_dir, "diffusion_models", f"{unet_name}.safetensors")
    save_file(sd, paths["unet"])
    paths["unet_parameters"] = sum(v.numel() for v in sd.values())

    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    fill_random(clip, g)
    clip_sd = {k[len("transformer."):]: v.to(torch.float16).contiguous()
               for k, v in clip.state_dict().items() if k.startswith("transformer.")}
    paths["clip"] = os.path.join(models_dir, "text_encoders", "clip_l.safetensors")
    save_file(clip_sd, paths["clip"])

    taesd = comfy.taesd.taesd.TAESD()
    fill_random(taesd, g)
    for part in ("encoder", "decoder"):
        prefix = f"taesd_{part}."
        part_sd = {k[len(prefix):]: v.contiguous() for k, v in taesd.state_dict().items() if k.startswith(prefix)}
        paths[f"taesd_{part}"] = os.path.join(models_dir, "vae_approx", f"taesd_{part}.safetensors")
        save_file(part_sd, paths[f"taesd_{part}"])
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comfy_dir")
    parser.add_argument("models_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = write_models(args.comfy_dir, args.models_dir, args.seed)
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
