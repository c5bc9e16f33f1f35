from setuptools import find_packages, setup

# Ranges, not pins: `pip install -e .` keeps a torch the user already has when it is in range.
# The floors are the oldest versions the code is shown to run on (tools/check_torch_range.sh runs the
# demo and a core test subset on exactly these floors and on the newest torch; README "Install").
# What the code needs: torch >= 2.4 for the fused AdamW on CPU (training/optim.py) and torch.amp.GradScaler(device),
# open_clip 3.0 for the factory/PreprocessCfg internals objectives/clip.py reads. torch 2.4.0 ran the demo,
# but a two-rank mp.spawn test hung in destroy_process_group (2 runs of 3); 2.5.1 passed everything.
# The exact tested versions of everything are in constraints.txt.
REQUIRES = ["torch>=2.5.1", "torchvision>=0.20.1", "open_clip_torch>=3.0.0", "webdataset>=1.0.2",
            "pyyaml", "numpy", "pillow", "tqdm", "braceexpand", "matplotlib"]
CLIP_BENCHMARK = ["clip_benchmark", "requests"]  # clip_benchmark imports requests but its metadata lacks it

setup(
    name="mcl_dist",
    version="0.1.0",
    description="Distributed Multistage Contrastive Learning (MCL) for CLIP on webdataset shards",
    packages=find_packages(include=["mcl_dist", "mcl_dist.*"]),
    python_requires=">=3.10",
    install_requires=REQUIRES,
    entry_points={"console_scripts": [
        "mcl-pretrain = mcl_dist.commands.pretrain:main",
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
        "faiss": ["faiss-cpu"],
        "faiss-gpu": ["faiss-gpu"],  # a CUDA 12 build on PyPI; docker/Dockerfile installs it
        "deepspeed": ["deepspeed"],  # tools/venv.sh and the Dockerfile install it without build isolation
        "tensorboard": ["tensorboard"],  # stage_s/tb/ scalars; metrics.jsonl has the same numbers
        "bench": ["scikit-learn", "pandas"],
        "eval": CLIP_BENCHMARK,  # python -m mcl_dist.eval.clip_benchmark
        "wandb": ["wandb"],  # train.report_to=wandb (open_clip_train's --report-to wandb)
        "dev": ["pytest", "pytest-xdist", "tensorboard", "scikit-learn", "pandas", "faiss-cpu", *CLIP_BENCHMARK, "wandb"],
    },
)
