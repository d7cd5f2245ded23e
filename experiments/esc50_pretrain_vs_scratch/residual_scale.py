"""How large each conformer block's input is next to what its modules add, for a pre-training checkpoint and for the
same architecture freshly initialised (a scratch run's start), on real clips.

    python experiments/esc50_pretrain_vs_scratch/residual_scale.py CHECKPOINT [CHECKPOINT ...] \\
        --audio-dir ../shared/data/esc50/audio --output results/residual_scale.json

Each block computes x + ffn1/2 + conv + attention + ffn2/2 and layer-normalises the sum; the modules normalise their
own inputs. The final layer norm divides by the sum's scale, so the larger that sum, the less a step of a given size
on the block's modules, or on what feeds x, changes the block's output. Per block, in eval mode: the root mean square
of its input x, of the half-step feed-forward outputs and the convolution module's output (read by forward hooks), and
of the sum before the final layer norm (the attention output is the rest of that sum); also that of the latent Z
(the feature encoder's output).
Clips: every ``--every``-th file of ``--audio-dir`` in name order, their first
``--seconds`` (shorter ones zero-padded, unmasked: the same for both models).
"""
import argparse
import glob
import os
import sys
from typing import Dict, List

import torch
from omegaconf import OmegaConf

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPOSITORY)
from benchmarks.common import write_json  # noqa: E402
from fairseq_logmel_conformer.data.audio import read_audio  # noqa: E402
from fairseq_logmel_conformer.models.logmel_conformer import LogmelConformerConfig, LogmelConformerModel  # noqa: E402


def rms(tensor: torch.Tensor) -> float:
    return round(tensor.float().pow(2).mean().sqrt().item(), 3)


@torch.no_grad()
def block_scales(model: LogmelConformerModel, source: torch.Tensor) -> Dict:
    """{"latent_rms": .., "blocks": [{input, ffn1_half, conv, ffn2_half, sum}, ...]} for a (B, S) batch."""
    blocks: List[Dict[str, float]] = [{} for _ in model.context_encoder.layers]
    latent: Dict[str, float] = {}
    hooks = [model.feature_encoder.register_forward_hook(lambda module, inputs, output: latent.update(rms=rms(output[0])))]

    def record(index: int, key: str, scale: float = 1.0, of_input: bool = False):
        def hook(module, inputs, output=None):
            blocks[index][key] = rms(scale * (inputs[0] if of_input else output))

        return hook

    for index, layer in enumerate(model.context_encoder.layers):
        hooks += [
            layer.register_forward_pre_hook(record(index, "input", of_input=True)),
            layer.ffn1.register_forward_hook(record(index, "ffn1_half", 0.5)),
            layer.conv_module.register_forward_hook(record(index, "conv")),
            layer.ffn2.register_forward_hook(record(index, "ffn2_half", 0.5)),
            layer.final_layer_norm.register_forward_pre_hook(record(index, "sum", of_input=True)),
        ]
    try:
        model.extract_features(source)
    finally:
        for hook in hooks:
            hook.remove()
    return {"latent_rms": latent["rms"], "blocks": blocks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="logmel_conformer pre-training checkpoints")
    parser.add_argument("--audio-dir", required=True, help="folder of audio clips, e.g. ../shared/data/esc50/audio")
    parser.add_argument("--every", type=int, default=50, help="take every N-th file in name order")
    parser.add_argument("--seconds", type=float, default=5.0, help="the first this many seconds of each clip")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fresh initialisation")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()

    from fairseq import checkpoint_utils

    files = sorted(path for path in glob.glob(os.path.join(args.audio_dir, "*")) if os.path.isfile(path))[:: args.every]
    results = {}
    for path in args.checkpoints:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
        # Over the defaults, as fairseq builds a model: a checkpoint's config lacks the fields added since.
        cfg = OmegaConf.merge(OmegaConf.structured(LogmelConformerConfig(sample_rate=16000)), state["cfg"]["model"])
        samples = int(args.seconds * cfg.sample_rate)
        source = torch.zeros(len(files), samples)
        for row, clip in enumerate(files):
            audio = read_audio(clip, cfg.sample_rate)[:samples]
            source[row, : len(audio)] = audio
        torch.manual_seed(args.seed)
        model = LogmelConformerModel(cfg).eval()
        fresh = block_scales(model, source)
        model.load_state_dict(state["model"])
        loaded = block_scales(model, source)
        results[path] = {"fresh": fresh, "loaded": loaded}
        print(path)
        for name, scales in (("fresh", fresh), ("loaded", loaded)):
            print(f"  {name}: Z {scales['latent_rms']}")
            for index, block in enumerate(scales["blocks"]):
                print(f"    block {index + 1}: " + ", ".join(f"{key} {value}" for key, value in block.items()))
    if args.output:
        settings = {**vars(args), "clips": len(files)}
        write_json(args.output, "residual_scale", settings, results, "cpu", command=" ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
