"""How large each conformer block's input is next to what its modules add, how the input path weighs the directions of
its input, and how alike the clip embeddings are, for a pre-training checkpoint and for the same architecture freshly
initialised (a scratch run's start), on real clips.

    python experiments/esc50_pretrain_vs_scratch/residual_scale.py CHECKPOINT [CHECKPOINT ...] \\
        --audio-dir ../shared/data/esc50/audio --output results/residual_scale.json

Each block computes x + ffn1/2 + conv + attention + ffn2/2 and layer-normalises the sum; the modules normalise their
own inputs. The final layer norm divides by the sum's scale, so the larger that sum, the less a step of a given size
on the block's modules, or on what feeds x, changes the block's output. Per block, in eval mode: the root mean square
of its input x, of the half-step feed-forward outputs and the convolution module's output (read by forward hooks), and
of the sum before the final layer norm (the attention output is the rest of that sum); also that of the latent Z
(the feature encoder's output).

The input path, from stacked log-mel steps to the first block's input, is two linear maps (the feature encoder's
projection to Z, then the context encoder's ``proj_in``): per map and for their product, the largest singular values,
the median and the effective rank (exp of the entropy of the normalised singular values). The clip embeddings are
each clip's mean frame embedding (what the fine-tuning head reads): the root mean square of their mean over clips
(what every clip shares) and of their spread around it, and their mean pairwise cosine; for the checkpoint also with
its last ``--restart`` blocks on fresh weights, as fine-tuning starts (``model.reinit_last_blocks``).
Clips: every ``--every``-th file of ``--audio-dir`` in name order, their first
``--seconds`` (shorter ones zero-padded, unmasked: the same for both models).
"""
import argparse
import glob
import os
import sys
from typing import Dict, List, Tuple

import torch
from omegaconf import OmegaConf

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPOSITORY)
from benchmarks.common import write_json  # noqa: E402
from fairseq_logmel_conformer.data.audio import read_audio  # noqa: E402
from fairseq_logmel_conformer.models.logmel_conformer import LogmelConformerConfig, LogmelConformerModel  # noqa: E402
from fairseq_logmel_conformer.models.logmel_conformer_classifier import (  # noqa: E402
    LogmelConformerClassifier,
    LogmelConformerClassifierConfig,
)


def rms(tensor: torch.Tensor) -> float:
    return round(tensor.float().pow(2).mean().sqrt().item(), 3)


@torch.no_grad()
def block_scales(model: LogmelConformerModel, source: torch.Tensor) -> Tuple[Dict, torch.Tensor]:
    """{"latent_rms": .., "blocks": [{input, ffn1_half, conv, ffn2_half, sum}, ...]} for a (B, S) batch, and the
    pass's (B, T', D) frame embeddings."""
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
        features = model.extract_features(source)[0]
    finally:
        for hook in hooks:
            hook.remove()
    return {"latent_rms": latent["rms"], "blocks": blocks}, features


INPUT_PATH = {"latent": "feature_encoder.proj.weight", "proj_in": "context_encoder.proj_in.weight"}


def spectrum(matrix: torch.Tensor) -> Dict:
    """{"top": 5 largest singular values, "median", "effective_rank"} of a 2-D weight."""
    values = torch.linalg.svdvals(matrix.float())
    share = values / values.sum()
    effective_rank = torch.exp(-(share * share.clamp_min(1e-12).log()).sum())
    return {"top": [round(v, 3) for v in values[:5].tolist()], "median": round(values.median().item(), 3), "effective_rank": round(effective_rank.item(), 1)}


def input_path(model: LogmelConformerModel) -> Dict:
    """Spectra of the feature encoder's projection, of proj_in and of their product (stacked log-mel -> block 1's input)."""
    weights = dict(model.named_parameters())
    result = {name: spectrum(weights[key]) for name, key in INPUT_PATH.items()}
    result["product"] = spectrum(weights[INPUT_PATH["proj_in"]] @ weights[INPUT_PATH["latent"]])
    return result


def clip_embeddings(features: torch.Tensor) -> Dict[str, float]:
    """How alike the clips' mean frame embeddings are, from (B, T', D) frame embeddings: shared part, spread, mean
    pairwise cosine."""
    pooled = features.mean(1).float()
    shared = pooled.mean(0)
    unit = torch.nn.functional.normalize(pooled, dim=1)
    cosines = unit @ unit.T
    pairs = len(pooled) * (len(pooled) - 1)
    return {"shared_rms": rms(shared), "spread_rms": rms(pooled - shared), "mean_cosine": round(((cosines.sum() - cosines.trace()) / pairs).item(), 3)}


def measure(model: LogmelConformerModel, source: torch.Tensor) -> Dict:
    """Block scales, input path and clip embeddings of one model, from one pass over the (B, S) clips."""
    scales, features = block_scales(model, source)
    return {**scales, "input_path": input_path(model), "clip_embeddings": clip_embeddings(features)}


@torch.no_grad()
def fine_tuning_start(cfg, state: Dict[str, torch.Tensor], restart: int, seed: int) -> LogmelConformerModel:
    """The encoder a fine-tuning run starts from: the checkpoint loaded as the classifier loads it, its last
    ``restart`` blocks on the fresh weights a scratch run with ``seed`` starts from."""
    torch.manual_seed(seed)
    classifier_cfg = LogmelConformerClassifierConfig(encoder=cfg, sample_rate=cfg.sample_rate, class_names=["any"], reinit_last_blocks=restart)
    classifier = LogmelConformerClassifier(classifier_cfg)
    classifier.load_encoder_weights(state)
    return classifier.encoder.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="logmel_conformer pre-training checkpoints")
    parser.add_argument("--audio-dir", required=True, help="folder of audio clips, e.g. ../shared/data/esc50/audio")
    parser.add_argument("--every", type=int, default=50, help="take every N-th file in name order")
    parser.add_argument("--seconds", type=float, default=5.0, help="the first this many seconds of each clip")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fresh initialisation")
    parser.add_argument("--restart", type=int, default=2, help="blocks restarted for fine-tuning (finetune/base.yaml's reinit_last_blocks)")
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
        fresh = measure(model, source)
        model.load_state_dict(state["model"])
        loaded = measure(model, source)
        start = fine_tuning_start(cfg, state["model"], args.restart, args.seed)
        loaded[f"clip_embeddings_last_{args.restart}_restarted"] = clip_embeddings(start.extract_features(source)[0])
        results[path] = {"fresh": fresh, "loaded": loaded}
        print(path)
        for name, scales in (("fresh", fresh), ("loaded", loaded)):
            print(f"  {name}: Z {scales['latent_rms']}")
            for index, block in enumerate(scales["blocks"]):
                print(f"    block {index + 1}: " + ", ".join(f"{key} {value}" for key, value in block.items()))
            for key, value in scales.items():
                if key.startswith(("input_path", "clip_embeddings")):
                    print(f"    {key}: {value}")
    if args.output:
        settings = {**vars(args), "clips": len(files)}
        write_json(args.output, "residual_scale", settings, results, "cpu", command=" ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
