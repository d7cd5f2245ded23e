"""Frame and clip embeddings (and class probabilities) from a checkpoint, with the Python API.

    python examples/extract_embeddings.py CHECKPOINT [AUDIO_FILE]
    python examples/extract_embeddings.py --demo          # pre-trains a tiny model on generated audio first

CHECKPOINT is a pre-trained (``logmel_conformer``) or fine-tuned
(``logmel_conformer_classifier``) checkpoint. Without AUDIO_FILE, a 25 s
recording of generated sounds (5 s each of tone, chirp, noise bursts, clicks,
tremolo) is used, passed once as a 44.1 kHz stereo array and once as a file.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf

from fairseq_logmel_conformer.data.synthetic import SOUND_CLASSES, synthesize, write_dataset, write_label_files
from fairseq_logmel_conformer.inference import AudioModel

DEMO_RATE = 44100


def demo_recording() -> np.ndarray:
    """(25 s * 44100, 2) float32: the five generated sound classes in turn, left and right channels alike."""
    rng = np.random.default_rng(0)
    mono = np.concatenate([synthesize(name, 5 * DEMO_RATE, DEMO_RATE, rng) for name in SOUND_CLASSES])
    return np.stack([mono, mono], axis=1)


def pretrain_demo_checkpoint(folder: str) -> str:
    """Pre-train ``pretrain_tiny`` for a few updates on generated clips (about 10 s on a CPU)."""
    clips = write_dataset(os.path.join(folder, "audio"), num_clips=30, seconds=(1.0, 3.0), seed=0)
    write_label_files(os.path.join(folder, "audio"), clips[:20], "train")
    write_label_files(os.path.join(folder, "audio"), clips[20:], "valid")
    command = [
        os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train"), "--config-name", "pretrain_tiny",
        f"task.data={folder}/audio", "common.cpu=true", f"checkpoint.save_dir={folder}/checkpoints", f"hydra.run.dir={folder}/run",
    ]
    subprocess.run(command, cwd=folder, check=True, capture_output=True)
    return os.path.join(folder, "checkpoints", "checkpoint_last.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="a checkpoint of this plugin")
    parser.add_argument("audio", nargs="?", help="an audio file (default: generated sounds)")
    parser.add_argument("--demo", action="store_true", help="pre-train a tiny model on generated audio and use it")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    args = parser.parse_args()
    if not args.checkpoint and not args.demo:
        parser.error("give a CHECKPOINT, or --demo")

    with tempfile.TemporaryDirectory() as workdir:
        checkpoint = args.checkpoint or pretrain_demo_checkpoint(workdir)
        # 10 s windows overlapping by 2 s: recordings of any length take the same memory.
        model = AudioModel.from_checkpoint(checkpoint, device=args.device, window_seconds=10.0, overlap_seconds=2.0)
        print(f"{type(model.model).__name__}: {model.embedding_dim}-d embeddings every {model.geometry.step_seconds * 1000:.0f} ms")

        if args.audio:
            result = model.embed(args.audio)
        else:
            stereo = demo_recording()
            result = model.embed(stereo, sample_rate=DEMO_RATE)
            path = os.path.join(workdir, "demo.wav")
            sf.write(path, stereo, DEMO_RATE, subtype="FLOAT")
            from_file = model.embed(path)
            print(f"array and file input agree: max difference {np.abs(from_file.frame_embeddings - result.frame_embeddings).max():.1e}")

        print(f"frame embeddings {result.frame_embeddings.shape}, clip embedding {result.clip_embedding.shape}, {result.duration:.2f} s")
        print(f"timestamps (step centres, s): {np.round(result.timestamps[:4], 3)} ... {result.timestamps[-1]:.3f}")
        if not args.audio:
            # Frames of the same generated sound should resemble that sound's mean embedding most.
            segments = np.minimum((result.timestamps // 5).astype(int), len(SOUND_CLASSES) - 1)
            unit = result.frame_embeddings / np.linalg.norm(result.frame_embeddings, axis=1, keepdims=True)
            centroids = np.stack([unit[segments == k].mean(0) for k in range(len(SOUND_CLASSES))])
            accuracy = (np.argmax(unit @ centroids.T, axis=1) == segments).mean()
            print(f"frames nearest their own sound's centroid: {accuracy:.0%}")

        if model.is_classifier:
            prediction = model.predict(args.audio or path, frame_level=True)
            print("top classes:", ", ".join(f"{name} {p:.2f}" for name, p in prediction.top_k(5)))
            # Steps are 80 ms: average the probabilities of the steps centred in each second [s, s + 1).
            seconds = np.floor(prediction.timestamps).astype(int)
            per_second = np.stack([prediction.frame_probabilities[seconds == s].mean(0) for s in np.unique(seconds)])
            print("most probable class each second:", [model.class_names[i] for i in per_second.argmax(1)])


if __name__ == "__main__":
    main()
