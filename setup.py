from setuptools import find_packages, setup

# Pinned to what the tests run against; docker/Dockerfile installs the same versions.
TORCH = "torch==2.14.1"
TORCHVISION = "torchvision==0.29.1"
OPEN_CLIP = "open_clip_torch==3.3.0"
WEBDATASET = "webdataset==1.0.2"
FAISS_CPU = "faiss-cpu==1.15.1"
FAISS_GPU = "faiss-gpu==1.15.1"  # on PyPI (checked 2026-11-30): a CUDA 12 (>= 12.6) build, 135 MB, pulls nvidia-*-cu12
DEEPSPEED = "deepspeed==0.19.8"
CLIP_BENCHMARK = "clip_benchmark==1.6.2"  # python -m mcl_dist.eval.clip_benchmark
CLIP_BENCHMARK_DEPS = ["requests"]  # imported by clip_benchmark 1.6.2 but missing from its metadata
WANDB = "wandb==0.31.0"  # train.report_to=wandb (open_clip_train's --report-to wandb)

setup(
    name="mcl_dist",
    version="0.1.0",
    description="Distributed Multistage Contrastive Learning (MCL) for CLIP on webdataset shards",
    packages=find_packages(include=["mcl_dist", "mcl_dist.*"]),
    python_requires=">=3.10",
    install_requires=[TORCH, TORCHVISION, OPEN_CLIP, WEBDATASET, "pyyaml", "numpy", "pillow", "tqdm",
                      "braceexpand", "matplotlib"],
    entry_points={"console_scripts": [
        "mcl-pretrain = mcl_dist.launcher:main",
        "mcl-evaluate = mcl_dist.commands.evaluate:main",
        "mcl-build-index = mcl_dist.commands.build_index:main",
        "mcl-export-labels = mcl_dist.commands.export_labels:main",
        "mcl-inspect-clusters = mcl_dist.commands.inspect_clusters:main",
        "mcl-make-shards = mcl_dist.commands.make_shards:main",
        "mcl-make-synthetic = mcl_dist.commands.make_synthetic:main",
        "mcl-gpu-check = mcl_dist.bench.gpu_check:command",
        "mcl-clip-benchmark = mcl_dist.eval.clip_benchmark:main",
        "mcl-export-clip-benchmark = mcl_dist.commands.export_clip_benchmark:main",
    ]},
    extras_require={
        "faiss": [FAISS_CPU],
        "faiss-gpu": [FAISS_GPU],
        "deepspeed": [DEEPSPEED],
        "tensorboard": ["tensorboard"],  # stage_s/tb/ scalars; metrics.jsonl has the same numbers
        "bench": ["scikit-learn", "pandas"],
        "eval": [CLIP_BENCHMARK, *CLIP_BENCHMARK_DEPS],
        "wandb": [WANDB],
        "dev": ["pytest", "pytest-xdist", "tensorboard", "scikit-learn", "pandas", FAISS_CPU, CLIP_BENCHMARK,
                *CLIP_BENCHMARK_DEPS, WANDB],
    },
)
