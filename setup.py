from setuptools import find_namespace_packages, find_packages, setup

setup(
    name="fairseq_logmel_conformer",
    version="0.1.0",
    description="fairseq plugin: conformer self-supervised learning on log-mel spectrograms for non-speech audio",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["fairseq_logmel_conformer", "fairseq_logmel_conformer.*"])
    + find_namespace_packages(include=["hydra_plugins.*"]),
    package_data={"fairseq_logmel_conformer": ["config/*/*.yaml", "config/*/*/*.yaml"]},
    install_requires=[
        "torch>=2.9.1",
        "torchaudio>=2.9.1",
        # fairseq 0.12.2 does not import on Python 3.11; fairseq-fixed ships the same package, fixed.
        "fairseq-fixed==0.12.3.1; python_version >= '3.11'",
        "fairseq==0.12.2; python_version < '3.11'",
        "hydra-core>=1.0.7,<1.4",
        "numpy",
        "soundfile",
        "sentencepiece",
        "scikit-learn",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "av", "onnx", "onnxscript", "onnxruntime"],
        "kinetics": ["av"],
        "export": ["onnx", "onnxscript", "onnxruntime"],
    },
    entry_points={
        "console_scripts": [
            "logmel-manifest=fairseq_logmel_conformer.cli.make_manifest:main",
            "logmel-pack=fairseq_logmel_conformer.cli.pack:main",
            "logmel-evaluate=fairseq_logmel_conformer.cli.evaluate:main",
            "logmel-prepare=fairseq_logmel_conformer.prepare.cli:main",
            "logmel-embed=fairseq_logmel_conformer.cli.embed:main",
            "logmel-tag=fairseq_logmel_conformer.cli.tag:main",
            "logmel-export=fairseq_logmel_conformer.cli.export:main",
        ]
    },
)
